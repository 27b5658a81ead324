"""Log compaction on real processes: nodes restart from snapshots, a lagging follower gets InstallSnapshot."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx


async def _write_keys(url: str, keys: range) -> None:
    async with httpx.AsyncClient(timeout=5.0) as http:
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with sem:
                r = await http.put(f"{url}/kv/key-{i}", json={"value": i})
                assert r.status_code == 200, r.text

        await asyncio.gather(*(put(i) for i in keys))


def _wait_applied(cluster, node: int, index: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = cluster.status(node)
        if st and st["applied"] >= index:
            return st
        time.sleep(0.05)
    raise AssertionError(f"node {node} did not apply up to {index}: {st}")


async def test_a_follower_behind_the_compacted_log_catches_up_by_snapshot(make_cluster):
    cluster = make_cluster(3, snapshot_every=100)
    cluster.start()
    leader = cluster.wait_leader()
    lagging = next(i for i in range(1, 4) if i != leader)
    cluster.kill(lagging, signal.SIGKILL)
    await _write_keys(cluster.http_url(leader), range(400))
    st_leader = cluster.status(leader)
    assert st_leader["snapshot_index"] >= 300, "the leader should have compacted its log by now"
    cluster.start_node(lagging)
    st = _wait_applied(cluster, lagging, st_leader["commit"])
    assert st["snapshot_index"] >= 300  # it was brought up by InstallSnapshot, not by replaying entries
    assert st["keys"] == 400


async def test_nodes_restarted_after_kill9_rebuild_state_from_snapshot_plus_log(make_cluster):
    cluster = make_cluster(3, snapshot_every=100)
    cluster.start()
    leader = cluster.wait_leader()
    await _write_keys(cluster.http_url(leader), range(250))
    for i in cluster.alive():
        cluster.kill(i, signal.SIGKILL)
    cluster.start()
    leader = cluster.wait_leader()
    async with httpx.AsyncClient(timeout=5.0) as http:
        for i in range(0, 250, 7):
            r = await http.get(f"{cluster.http_url(leader)}/kv/key-{i}")
            assert r.status_code == 200 and r.json()["value"] == i
    assert all(cluster.status(i)["snapshot_index"] >= 200 for i in range(1, 4))
