"""The sharded cache against the three real cache Redis nodes (6380-6382, `scripts/local-services`).

Each test works under its own key prefix and deletes its keys afterwards. A fourth node, where one is
needed, is database 1 of the 6382 server: a separate keyspace, so a separate node for the ring.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.cache import ShardedCache, parse_nodes
from services.common.settings import Settings

NODES = parse_nodes(Settings().cache_nodes)
FOURTH = ("127.0.0.1:6382/1", "redis://127.0.0.1:6382/1")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    clients = [aioredis.Redis.from_url(u) for u in [*NODES.values(), FOURTH[1]]]
    try:
        for client in clients:
            await client.ping()
    except (RedisError, OSError) as exc:
        pytest.fail(f"cache Redis nodes 6380-6382 must answer (run scripts/local-services): {exc}")
    name = f"test:{uuid.uuid4().hex[:10]}:"
    yield name
    for client in clients:
        keys = [k async for k in client.scan_iter(match=name + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _cache(prefix: str, **options: object) -> ShardedCache:
    return ShardedCache(NODES, prefix=prefix, **options)


async def _raw(url: str, key: str) -> bytes | None:
    client = aioredis.Redis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


class Counter:
    """A loader that counts its calls and returns the current value of the 'database'."""

    def __init__(self, value: object, delay: float = 0.0) -> None:
        self.value, self.delay, self.calls = value, delay, 0

    async def __call__(self) -> object:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.value


async def test_single_flight_loads_a_cold_key_once_under_50_concurrent_gets(prefix: str) -> None:
    async with _cache(prefix) as cache:
        loader = Counter({"sku": "A-1", "stock": 7}, delay=0.05)
        values = await asyncio.gather(*(cache.get_or_load("product:A-1", loader, ttl=30) for _ in range(50)))
        assert loader.calls == 1
        assert all(v == {"sku": "A-1", "stock": 7} for v in values)
        assert cache.coalesced == 49
        again = await asyncio.gather(*(cache.get_or_load("product:A-1", loader) for _ in range(10)))
        assert loader.calls == 1 and again[0] == values[0]


async def test_values_land_on_the_node_the_ring_names_and_spread_over_all_three(prefix: str) -> None:
    async with _cache(prefix) as cache:
        for i in range(300):
            await cache.set(f"k{i}", i, ttl=30)
        owners = {cache.ring.node_for(f"k{i}") for i in range(300)}
        assert owners == set(NODES)
        for i in range(0, 300, 7):
            owner = cache.ring.node_for(f"k{i}")
            assert await _raw(NODES[owner], f"{prefix}k{i}") is not None
            for other in set(NODES) - {owner}:
                assert await _raw(NODES[other], f"{prefix}k{i}") is None


async def test_invalidation_removes_the_value_and_the_next_read_loads_the_new_one(prefix: str) -> None:
    async with _cache(prefix) as cache:
        db = Counter({"stock": 10})
        assert await cache.get_or_load("stock:A-1", db) == {"stock": 10}
        db.value = {"stock": 9}  # an order reserved one unit
        assert await cache.get_or_load("stock:A-1", db) == {"stock": 10}  # cached
        assert await cache.invalidate("stock:A-1") == 1
        owner = cache.ring.node_for("stock:A-1")
        assert await _raw(NODES[owner], f"{prefix}stock:A-1") is None
        assert await cache.get_or_load("stock:A-1", db) == {"stock": 9}
        assert db.calls == 2


async def test_a_load_in_flight_when_the_key_is_invalidated_is_not_stored(prefix: str) -> None:
    async with _cache(prefix) as cache:
        slow = Counter("old", delay=0.2)
        pending = asyncio.ensure_future(cache.get_or_load("price:A-1", slow))
        await asyncio.sleep(0.05)
        await cache.invalidate("price:A-1")
        assert await pending == "old"  # its callers get what was read
        found, _ = await cache.get("price:A-1")
        assert not found


async def test_per_node_counters_count_hits_and_misses(prefix: str) -> None:
    async with _cache(prefix) as cache:
        for i in range(60):
            await cache.get_or_load(f"p{i}", Counter(i))
        for i in range(60):
            await cache.get_or_load(f"p{i}", Counter(i))
        stats = cache.stats()
        assert sum(s.misses for s in stats.values()) == 60
        assert sum(s.hits for s in stats.values()) == 60
        assert all(s.hits == s.misses > 0 for s in stats.values())


async def test_invalidate_during_a_ring_change_also_deletes_on_the_previous_owner(prefix: str) -> None:
    async with _cache(prefix) as cache:
        keys = [f"view:{i}" for i in range(200)]
        for k in keys:
            await cache.set(k, "v1", ttl=60)
        before = cache.ring
        share = await cache.add_node(*FOURTH)
        assert 0.1 < share < 0.45
        assert cache.nodes == {**NODES, FOURTH[0]: FOURTH[1]}
        moved = [k for k in keys if cache.ring.node_for(k) == FOURTH[0]]
        assert moved and all(before.node_for(k) != FOURTH[0] for k in moved)
        key = moved[0]
        old_owner = before.node_for(key)
        assert await _raw(NODES[old_owner], f"{prefix}{key}") == b"\xa2v1"
        assert cache.changing()
        await cache.invalidate(key)
        assert await _raw(NODES[old_owner], f"{prefix}{key}") is None


async def test_after_the_change_window_invalidate_touches_only_the_owner(prefix: str) -> None:
    now = [0.0]
    async with _cache(prefix, clock=lambda: now[0], max_ttl=10, default_ttl=5) as cache:
        await cache.add_node(*FOURTH)
        assert cache.changing()
        now[0] = 11.0
        assert not cache.changing()
        key = next(f"x{i}" for i in range(1000) if cache.ring.node_for(f"x{i}") == FOURTH[0])
        await cache.set(key, 1)
        assert await cache.invalidate(key) == 1


async def test_a_node_removed_and_re_added_does_not_serve_a_stale_value(prefix: str) -> None:
    async with _cache(prefix) as cache:
        key = "product:B-2"
        owner = cache.ring.node_for(key)
        db = Counter({"price": 100})
        assert await cache.get_or_load(key, db) == {"price": 100}
        share = await cache.remove_node(owner)
        assert 0.2 < share < 0.5
        db.value = {"price": 120}  # the price changes while the node is out of the ring
        await cache.invalidate(key)
        assert await cache.get_or_load(key, db) == {"price": 120}
        assert await _raw(NODES[owner], f"{prefix}{key}") is not None, "the removed node still holds v1"
        await cache.add_node(owner, NODES[owner])
        assert cache.ring.node_for(key) == owner
        assert await cache.get_or_load(key, db) == {"price": 120}


async def test_a_node_that_does_not_answer_reads_as_a_miss(prefix: str) -> None:
    nodes = {**NODES, "127.0.0.1:1": "redis://127.0.0.1:1"}
    async with ShardedCache(nodes, prefix=prefix) as cache:
        key = next(f"d{i}" for i in range(1000) if cache.ring.node_for(f"d{i}") == "127.0.0.1:1")
        assert await cache.get_or_load(key, Counter("fresh")) == "fresh"
        stats = cache.stats()["127.0.0.1:1"]
        assert (stats.errors, stats.skipped) == (1, 2), "start found it failing: the read and the store skip it"


async def test_get_or_load_many_reads_each_node_once_and_loads_only_what_is_missing(prefix: str) -> None:
    # a node's reply is waited for long enough that a loaded machine (two test lanes) cannot turn a hit into a
    # miss: the claim here is about reads, not about timeouts
    async with _cache(prefix, timeout=5.0) as cache:
        keys = [f"m{i}" for i in range(12)]
        assert {cache.ring.node_for(k) for k in keys} == set(NODES), "the keys span every node"
        for key in keys[:8]:
            await cache.set(key, {"v": key}, ttl=30)
        before = {n: (s.hits, s.misses) for n, s in cache.stats().items()}
        loaders = {k: Counter({"loaded": k}) for k in keys}
        values = await cache.get_or_load_many(loaders, ttl=30)
        assert values == {k: {"v": k} for k in keys[:8]} | {k: {"loaded": k} for k in keys[8:]}
        assert [loaders[k].calls for k in keys] == [0] * 8 + [1] * 4
        hits = sum(s.hits - before[n][0] for n, s in cache.stats().items())
        misses = sum(s.misses - before[n][1] for n, s in cache.stats().items())
        assert (hits, misses) == (8, 4), "each key is read once: found or missed"
        assert await cache.get_many(keys) == {k: {"v": k} for k in keys[:8]} | {k: {"loaded": k} for k in keys[8:]}, \
            "the loaded values were stored"


async def test_get_or_load_many_joins_a_load_already_in_flight(prefix: str) -> None:
    async with _cache(prefix, timeout=5.0) as cache:
        first, second = Counter("first", delay=0.1), Counter("second")
        running = asyncio.ensure_future(cache.get_or_load("f1", first, ttl=30))
        await asyncio.sleep(0.02)  # its flight has begun
        assert await cache.get_or_load_many({"f1": second}, ttl=30) == {"f1": "first"}
        assert await running == "first" and (first.calls, second.calls) == (1, 0)


async def test_get_many_sends_one_mget_per_node(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cache(prefix) as cache:
        keys = [f"n{i}" for i in range(30)]
        calls: list[str] = []
        real = cache._call

        async def counted(name, op):
            calls.append(name)
            return await real(name, op)

        monkeypatch.setattr(cache, "_call", counted)
        assert await cache.get_many(keys) == {}
        assert sorted(calls) == sorted({cache.ring.node_for(k) for k in keys})


async def test_a_node_removed_while_an_invalidation_awaits_is_skipped_not_an_error(prefix: str) -> None:
    """An invalidation chooses its nodes, then deletes on each in turn; a node removed from the ring meanwhile
    (txlab scenario hashring under load) once raised KeyError from the middle of it."""
    async with _cache(prefix, timeout=5.0) as cache:
        gone = next(iter(NODES))
        keys = [f"r{i}" for i in range(30)]
        chosen = {k: cache._owners(k) | {gone} for k in keys}  # as chosen before the change
        await cache.remove_node(gone)
        owners = cache._owners
        cache._owners = lambda key: chosen.get(key) or owners(key)
        assert await cache.invalidate_many(keys) == 0
        assert gone not in cache._missed, "nothing is kept for a node off the ring"


async def test_get_many_reads_a_node_that_does_not_answer_as_missing(prefix: str) -> None:
    nodes = {**NODES, "127.0.0.1:1": "redis://127.0.0.1:1"}
    async with ShardedCache(nodes, prefix=prefix) as cache:
        dead = next(f"d{i}" for i in range(1000) if cache.ring.node_for(f"d{i}") == "127.0.0.1:1")
        live = next(f"d{i}" for i in range(1000) if cache.ring.node_for(f"d{i}") != "127.0.0.1:1")
        await cache.set(live, 1, ttl=30)
        values = await cache.get_or_load_many({dead: Counter("fresh"), live: Counter("unused")})
        assert values == {dead: "fresh", live: 1}


async def test_ring_info_describes_nodes_points_and_shares(prefix: str) -> None:
    async with _cache(prefix) as cache:
        info = cache.ring_info()
        assert [n["name"] for n in info["nodes"]] == sorted(NODES)
        assert all(n["points"] == 160 for n in info["nodes"])
        assert sum(n["share"] for n in info["nodes"]) == pytest.approx(1.0)
        assert info["scheme"] == "ketama" and info["changing"] is False
        with pytest.raises(ValueError):
            await cache.add_node(sorted(NODES)[0], NODES[sorted(NODES)[0]])
        with pytest.raises(KeyError):
            await cache.remove_node("nope:1")
