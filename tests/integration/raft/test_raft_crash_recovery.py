"""kill -9 under load, on real processes: no acknowledged write is lost and histories stay linearizable."""

from __future__ import annotations

import asyncio
import random
import signal

import httpx

from raft.testing.linearizability import check_kv

from .kvclient import HistoryClient


async def _load(cluster, history, clients: int, stop: asyncio.Event, keys: list[str]) -> None:
    async with httpx.AsyncClient(timeout=3.0) as http:
        async def run(no: int) -> None:
            c = HistoryClient(cluster, no, http, history)
            rng = random.Random(no)
            n = 0
            while not stop.is_set():
                key = rng.choice(keys)
                kind = rng.choice(["put", "put", "get", "cas"])
                n += 1
                if kind == "cas":
                    await c.call("cas", key, value=f"{no}-{n}", expected=f"{no}-{n - 1}")
                else:
                    await c.call(kind, key, value=f"{no}-{n}")

        await asyncio.gather(*(run(no) for no in range(clients)))


async def test_kill9_of_leaders_and_followers_mid_load_keeps_the_history_linearizable(make_cluster):
    cluster = make_cluster(3)
    cluster.start()
    cluster.wait_leader()
    history: list = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(cluster, history, 6, stop, [f"k{i}" for i in range(4)]))
    await asyncio.sleep(0.7)
    for round_ in range(3):
        leader = await asyncio.to_thread(cluster.wait_leader)
        # rounds 0 and 2 kill the leader, round 1 a follower; each victim restarts from its own disk
        victim = leader if round_ != 1 else next(i for i in range(1, 4) if i != leader)
        await asyncio.to_thread(cluster.kill, victim, signal.SIGKILL)
        await asyncio.sleep(0.8)
        await asyncio.to_thread(cluster.start_node, victim)
        await asyncio.sleep(0.7)
    stop.set()
    await load
    # a final read of every key, after the load, is part of the history too
    async with httpx.AsyncClient(timeout=3.0) as http:
        final = HistoryClient(cluster, 99, http, history)
        for i in range(4):
            await final.call("get", f"k{i}")
    acked = [op for op in history if op.ret is not None]
    assert len(acked) > 100, f"too little load got through: {len(acked)} operations"
    result = check_kv(history)
    assert result.ok is True, f"not linearizable on key {result.key} ({result.steps} steps)"


async def test_every_acknowledged_write_survives_kill9_of_every_node(make_cluster):
    cluster = make_cluster(3)
    cluster.start()
    leader = cluster.wait_leader()
    acked: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=3.0) as http:
        async def writer(w: int) -> None:
            for n in range(60):
                key = f"w{w}-{n}"
                r = await http.put(f"{cluster.http_url(leader)}/kv/{key}", json={"value": n})
                if r.status_code == 200:
                    acked[key] = n

        writers = asyncio.gather(*(writer(w) for w in range(8)))
        await asyncio.sleep(0.3)
        follower = next(i for i in range(1, 4) if i != leader)
        await asyncio.to_thread(cluster.kill, follower, signal.SIGKILL)  # mid-load
        await writers
    for i in cluster.alive():
        await asyncio.to_thread(cluster.kill, i, signal.SIGKILL)
    await asyncio.to_thread(cluster.start)
    new_leader = await asyncio.to_thread(cluster.wait_leader)
    assert len(acked) > 100
    async with httpx.AsyncClient(timeout=5.0) as http:
        for key, n in acked.items():
            r = await http.get(f"{cluster.http_url(new_leader)}/kv/{key}")
            assert r.status_code == 200 and r.json()["value"] == n, (key, r.status_code, r.text)
