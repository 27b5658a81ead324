"""Single-server membership changes over the admin API, on real processes."""

from __future__ import annotations

import time

import httpx


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_fourth_node_joins_catches_up_and_the_old_leader_can_be_removed(spare_node_4):
    c, leader = spare_node_4
    url = c.http_url(leader)
    assert c.status(4)["role"] == "follower" and 4 not in c.status(4)["voters"]
    r = httpx.post(f"{url}/raft/members", json={"op": "add", "node": 4}, headers=c.admin_headers(),
                   timeout=10)
    assert r.status_code == 200 and sorted(r.json()["voters"]) == [1, 2, 3, 4]
    _wait(lambda: (c.status(4) or {}).get("applied", 0) >= c.status(leader)["commit"])
    assert c.status(4)["keys"] == 20

    r = httpx.post(f"{url}/raft/members", json={"op": "remove", "node": leader}, headers=c.admin_headers(),
                   timeout=10)
    assert r.status_code == 200 and leader not in r.json()["voters"]
    remaining = [i for i in (1, 2, 3, 4) if i != leader]
    new = c.wait_leader(timeout=10, among=remaining)
    assert httpx.put(f"{c.http_url(new)}/kv/after", json={"value": "ok"}).status_code == 200
    assert sorted(c.status(new)["voters"]) == remaining


def test_membership_requests_are_validated(make_cluster):
    c = make_cluster(3)
    c.start()
    url, auth = c.http_url(c.wait_leader()), c.admin_headers()
    assert httpx.post(f"{url}/raft/members", json={"op": "grow", "node": 4}, headers=auth).status_code == 400
    assert httpx.post(f"{url}/raft/members", json={"op": "add", "node": 2}, headers=auth).status_code == 409
    # an id beyond what the log's codec holds once stopped every replica for good (each restart replayed it); ids
    # whose ports do not exist or are another node's are refused too, and nothing reaches the log
    for node in (18446744073709551616, 99999999999999999999, 70000, 101, True):
        r = httpx.post(f"{url}/raft/members", json={"op": "add-learner", "node": node}, headers=auth)
        assert r.status_code == 400, (node, r.text)
        if node == 101:
            assert "node ids here are 1 to 100" in r.text, r.text
    assert httpx.put(f"{url}/kv/still", json={"value": "serving"}).status_code == 200
    assert sorted(c.status(c.wait_leader())["voters"]) == [1, 2, 3]
