"""A new node joins as a learner, catches up, and is promoted (thesis §4.2.1), with `txlab raft` on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _txlab_raft(c, *args: str) -> subprocess.CompletedProcess:
    """`txlab raft ARGS` against cluster `c`; it finds the admin token in $TXLAB_DATA_DIR like the nodes do."""
    return subprocess.run([sys.executable, "-m", "raft.cli", *args, "--base-port", str(c.base_port)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_a_fourth_node_joins_as_a_learner_catches_up_and_is_promoted_to_voter(spare_node_4):
    c, leader = spare_node_4
    url = c.http_url(leader)

    out = _txlab_raft(c, "add-learner", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "node 4 joined as a learner" in out.stdout
    st = c.status(leader)
    assert st["learners"] == [4] and 4 not in st["voters"]
    _wait(lambda: (c.status(4) or {}).get("applied", 0) >= c.status(leader)["commit"])
    assert c.status(4)["keys"] == 20 and c.status(4)["learners"] == [4]
    assert c.status(leader)["progress"]["4"]["match"] >= c.status(4)["applied"]  # the leader shows its match

    out = _txlab_raft(c, "promote", str(next(i for i in (1, 2, 3) if i != leader)))
    assert out.returncode == 1 and "not a learner" in out.stdout

    c.procs[4].send_signal(signal.SIGSTOP)  # the learner falls behind
    try:
        for i in range(30):
            assert httpx.put(f"{url}/kv/lag{i}", json={"value": i}).status_code == 200
        out = _txlab_raft(c, "promote", "4")
        assert out.returncode == 1 and "has not caught up" in out.stdout
    finally:
        c.procs[4].send_signal(signal.SIGCONT)
    _wait(lambda: (c.status(4) or {}).get("applied", 0) >= c.status(leader)["commit"])

    out = _txlab_raft(c, "promote", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "node 4 was promoted to voter" in out.stdout
    for i in (leader, 4):
        st = c.status(i)
        assert sorted(st["voters"]) == [1, 2, 3, 4] and st["learners"] == []
    assert httpx.put(f"{url}/kv/after", json={"value": "ok"}).status_code == 200

    out = _txlab_raft(c, "remove", "4")
    assert out.returncode == 0 and "node 4 was removed" in out.stdout
    assert sorted(c.status(leader)["voters"]) == [1, 2, 3]


def test_membership_ops_are_validated_over_http(make_cluster):
    c = make_cluster(3)
    c.start()
    url, auth = c.http_url(c.wait_leader()), c.admin_headers()
    r = httpx.post(f"{url}/raft/members", json={"op": "promote", "node": 2}, headers=auth, timeout=10)
    assert r.status_code == 409 and "not a learner" in r.json()["error"]
    r = httpx.post(f"{url}/raft/members", json={"op": "add-learner", "node": 2}, headers=auth, timeout=10)
    assert r.status_code == 409 and "already a voter" in r.json()["error"]
