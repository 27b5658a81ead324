"""A 3-node KV cluster of real processes: the HTTP contract, redirects, exactly-once, partitions."""

from __future__ import annotations

import time

import httpx
import pytest


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(3)
    c.start()
    c.wait_leader()
    return c


def test_committed_writes_are_read_back_from_the_leader(cluster):
    url = cluster.http_url(cluster.wait_leader())
    r = httpx.put(f"{url}/kv/greeting", json={"value": {"text": "hello", "n": 1}})
    assert r.status_code == 200 and r.json() == {"key": "greeting", "value": {"n": 1, "text": "hello"}}
    r = httpx.get(f"{url}/kv/greeting")
    assert r.status_code == 200 and r.json() == {"key": "greeting", "value": {"n": 1, "text": "hello"}}
    assert httpx.get(f"{url}/kv/missing").status_code == 404


def test_compare_and_set_swaps_only_on_the_expected_value_and_delete_removes(cluster):
    url = cluster.http_url(cluster.wait_leader())
    assert httpx.post(f"{url}/kv/c/cas", json={"expected": None, "value": 1}).status_code == 200
    assert httpx.post(f"{url}/kv/c/cas", json={"expected": 5, "value": 2}).status_code == 409
    assert httpx.post(f"{url}/kv/c/cas", json={"expected": 1, "value": 2}).status_code == 200
    assert httpx.get(f"{url}/kv/c").json()["value"] == 2
    assert httpx.delete(f"{url}/kv/c").status_code == 200
    assert httpx.delete(f"{url}/kv/c").status_code == 404
    assert httpx.get(f"{url}/kv/c").status_code == 404


def test_a_follower_redirects_to_the_same_path_on_the_leader(cluster):
    leader = cluster.wait_leader()
    follower = next(i for i in range(1, 4) if i != leader)
    r = httpx.put(f"{cluster.http_url(follower)}/kv/x?a=1", json={"value": 1})
    assert r.status_code == 307
    assert r.headers["location"] == f"{cluster.http_url(leader)}/kv/x?a=1"
    assert httpx.get(f"{cluster.http_url(follower)}/kv/x").status_code == 307
    r = httpx.put(f"{cluster.http_url(follower)}/kv/x", json={"value": 7}, follow_redirects=True)
    assert r.status_code == 200
    assert httpx.get(f"{cluster.http_url(follower)}/kv/x", follow_redirects=True).json()["value"] == 7


def test_status_reports_role_term_leader_commit_applied_and_peers(cluster):
    leader = cluster.wait_leader()
    st = httpx.get(f"{cluster.http_url(leader)}/raft/status").json()
    assert st["id"] == leader and st["role"] == "leader" and st["leader"] == leader and st["term"] >= 1
    assert st["commit"] >= 1 and st["applied"] <= st["commit"]
    assert set(st["peers"]) == {"1", "2", "3"}


def test_bad_input_gets_a_4xx_with_a_message_never_a_500(cluster):
    leader = cluster.wait_leader()
    url = cluster.http_url(leader)
    cases = [
        httpx.put(f"{url}/kv/k", content=b"{not json"),
        httpx.put(f"{url}/kv/k", json={"val": 1}),
        httpx.put(f"{url}/kv/k", json=[1, 2]),
        httpx.post(f"{url}/kv/k/cas", json={"value": 1}),
        httpx.post(f"{url}/kv/k", json={"value": 1}),
        httpx.patch(f"{url}/kv/k", json={"value": 1}),
        httpx.get(f"{url}/nope"),
        httpx.put(f"{url}/kv/{'k' * 2000}", json={"value": 1}),
        httpx.post(f"{url}/raft/partition", json={"block": "everyone"}, headers=cluster.admin_headers()),
        httpx.post(f"{url}/raft/partition", json={"block": [leader]}, headers=cluster.admin_headers()),
        httpx.post(f"{url}/raft/partition", json={"block": [True]}, headers=cluster.admin_headers()),
        httpx.put(f"{url}/kv/k", content=b"[" * 100_000),
        httpx.put(f"{url}/kv/k", content=b'{"value": NaN}'),
        httpx.put(f"{url}/kv/k", json={"value": 1}, headers={"X-Session-Id": "1", "X-Request-Seq": "x"}),
        httpx.put(f"{url}/kv/k", json={"value": 1}, headers={"X-Session-Id": "1", "X-Request-Seq": "9" * 30}),
        httpx.put(f"{url}/kv/k", json={"value": 1}, headers={"X-Session-Id": "1", "X-Request-Seq": "0"}),
        httpx.put(f"{url}/kv/k", json={"value": 1}, headers={"X-Session-Id": "me", "X-Request-Seq": "1"}),
        httpx.put(f"{url}/kv/k", json={"value": 1}, headers={"X-Client-Id": "c", "X-Request-Seq": "1"}),
        httpx.get(f"{url}/sessions"),
    ]
    follower = next(i for i in range(1, 4) if i != cluster.wait_leader())
    cases.append(httpx.put(f"{cluster.http_url(follower)}/kv/k", json={"nope": 1}))  # 400 before any redirect
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.status_code)
        assert r.json()["error"]


def test_a_retried_command_with_the_same_session_applies_once(cluster):
    url = cluster.http_url(cluster.wait_leader())
    httpx.put(f"{url}/kv/acct", json={"value": 10})
    r = httpx.post(f"{url}/sessions")
    assert r.status_code == 200
    session = str(r.json()["session"])
    headers = {"X-Session-Id": session, "X-Request-Seq": "1"}
    first = httpx.post(f"{url}/kv/acct/cas", json={"expected": 10, "value": 11}, headers=headers)
    retry = httpx.post(f"{url}/kv/acct/cas", json={"expected": 10, "value": 11}, headers=headers)
    assert first.status_code == 200
    assert retry.status_code == 200  # the cached outcome, although the value is no longer 10
    fresh = httpx.post(f"{url}/kv/acct/cas", json={"expected": 10, "value": 11},
                       headers={"X-Session-Id": session, "X-Request-Seq": "2"})
    assert fresh.status_code == 409


def test_sessions_get_distinct_ids_and_a_follower_redirects_registration_to_the_leader(cluster):
    leader = cluster.wait_leader()
    follower = next(i for i in range(1, 4) if i != leader)
    assert httpx.post(f"{cluster.http_url(follower)}/sessions").status_code == 307
    ids = [httpx.post(f"{cluster.http_url(follower)}/sessions", follow_redirects=True).json()["session"]
           for _ in range(3)]
    assert len(set(ids)) == 3 and all(isinstance(i, int) and i > 0 for i in ids)


def test_a_write_on_a_session_nobody_registered_is_refused_as_expired_and_not_applied(cluster):
    url = cluster.http_url(cluster.wait_leader())
    r = httpx.put(f"{url}/kv/ghost", json={"value": 1}, headers={"X-Session-Id": "4242", "X-Request-Seq": "1"})
    assert r.status_code == 410 and r.json()["error"].startswith("session expired")
    assert httpx.get(f"{url}/kv/ghost").status_code == 404


def test_a_partitioned_leader_is_replaced_and_steps_down_after_healing(cluster):
    old = cluster.wait_leader()
    others = [i for i in range(1, 4) if i != old]
    auth = cluster.admin_headers()
    r = httpx.post(f"{cluster.http_url(old)}/raft/partition", json={"block": others}, headers=auth)
    assert r.status_code == 200 and r.json()["blocked"] == others
    new = cluster.wait_leader(timeout=10, among=others)
    assert httpx.put(f"{cluster.http_url(new)}/kv/after", json={"value": "majority side"}).status_code == 200
    assert httpx.delete(f"{cluster.http_url(old)}/raft/partition", headers=auth).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = cluster.status(old)
        if st["role"] == "follower" and st["leader"] in others:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"node {old} did not step down after the partition healed: {st}")
    assert httpx.get(f"{cluster.http_url(cluster.wait_leader())}/kv/after").json()["value"] == "majority side"


def test_admin_routes_demand_the_bearer_token_when_one_is_set(make_cluster, monkeypatch):
    monkeypatch.setenv("TXLAB_ADMIN_TOKEN", "s3cret")
    c = make_cluster(3)
    c.start()
    url = c.http_url(c.wait_leader())
    assert httpx.post(f"{url}/raft/partition", json={"block": [2]}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{url}/raft/partition", json={"block": [2]}, headers=wrong).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert httpx.delete(f"{url}/raft/partition", headers=ok).status_code == 200
    assert httpx.get(f"{url}/raft/status").status_code == 200  # status stays public


def test_every_node_serves_its_raft_figures_to_prometheus_and_answers_alive(cluster):
    from prometheus_client.parser import text_string_to_metric_families

    leader = cluster.wait_leader()
    assert httpx.put(f"{cluster.http_url(leader)}/kv/m", json={"value": 1}).status_code == 200
    for node in range(1, 4):
        url = cluster.http_url(node)
        assert httpx.get(f"{url}/alive").json() == {"status": "alive", "id": node}
        response = httpx.get(f"{url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        figures = {s.name: s.value for f in text_string_to_metric_families(response.text) for s in f.samples
                   if s.name.startswith("txlab_raft")}
        assert figures["txlab_raft_term"] >= 1
        assert figures["txlab_raft_leader"] == (1.0 if node == leader else 0.0)
        if node == leader:
            assert figures["txlab_raft_commit_index"] >= 2 and figures["txlab_raft_kv_keys"] == 1
