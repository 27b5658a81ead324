"""The sharded cache with one node hung (SIGSTOP), over three redis-servers of the test's own.

The claim is "does not hang", not a speed: the bounds are generous, but without socket timeouts every
call to the hung node waits forever, and without the cool-down a hundred calls pay a timeout each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from services.cache import ShardedCache, node_name
from tests.conftest import OwnRedis, own_redis_servers

CALLS = 50
BOUND = 5.0  # seconds for all the calls to a hung node together


@pytest.fixture
def redis_nodes() -> Iterator[list[OwnRedis]]:
    with own_redis_servers(3) as started:
        yield started


class Loader:
    """A loader that counts its calls and returns the current value of the 'database'."""

    def __init__(self, value: object) -> None:
        self.value, self.calls = value, 0

    async def __call__(self) -> object:
        self.calls += 1
        return self.value


def _ring(nodes: list[OwnRedis]) -> dict[str, str]:
    return {node_name(n.url): n.url for n in nodes}


def _keys_on(cache: ShardedCache, node: str, count: int, tag: str) -> list[str]:
    return [k for k in (f"{tag}{i}" for i in range(count * 20)) if cache.ring.node_for(k) == node][:count]


async def _raw(url: str, key: str) -> bytes | None:
    client = aioredis.Redis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


@pytest.mark.timeout(60)
async def test_a_hung_node_is_a_miss_within_a_bound_and_serves_again_when_it_resumes(
        redis_nodes: list[OwnRedis]) -> None:
    hung, prefix = redis_nodes[0], f"test:{uuid.uuid4().hex[:10]}:"
    name = node_name(hung.url)
    async with ShardedCache(_ring(redis_nodes), prefix=prefix) as cache:
        keys = _keys_on(cache, name, CALLS, "k")
        healthy = next(k for k in (f"h{i}" for i in range(1000)) if cache.ring.node_for(k) != name)
        for key in [*keys, healthy]:
            await cache.set(key, "old", ttl=60)
        db = Loader("new")  # the writes the invalidations below stand for
        hung.hang()
        try:
            async def during_the_hang() -> list[object]:
                for key in keys:
                    await cache.invalidate(key)
                return [await cache.get_or_load(key, db) for key in keys]

            started = time.monotonic()
            values = await asyncio.wait_for(during_the_hang(), BOUND)
            elapsed = time.monotonic() - started
            assert values == ["new"] * CALLS and db.calls == CALLS, "reads fall back to the loader"
            assert elapsed < BOUND
            assert await cache.get_or_load(healthy, Loader("unused")) == "old", "the other nodes still serve"
            stats = cache.stats()[name]
            assert stats.errors >= 1 and stats.skipped >= CALLS, vars(stats)
        finally:
            hung.resume()

        probe = _keys_on(cache, name, 1, "probe")[0]

        async def serves_again() -> None:
            while True:
                await cache.set(probe, 1)
                if (await cache.get(probe))[0]:
                    return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(serves_again(), BOUND)
        # the invalidations it missed were made good before it served anything
        assert [await cache.get_or_load(key, db) for key in keys] == ["new"] * CALLS
        assert await _raw(hung.url, prefix + keys[0]) is not None, "loads are stored on it again"


@pytest.mark.timeout(60)
async def test_a_cache_starts_and_closes_within_a_bound_while_a_node_hangs(redis_nodes: list[OwnRedis]) -> None:
    hung = redis_nodes[1]
    hung.hang()
    try:
        async def start_read_close() -> object:
            async with ShardedCache(_ring(redis_nodes), prefix=f"test:{uuid.uuid4().hex[:10]}:") as cache:
                key = _keys_on(cache, node_name(hung.url), 1, "s")[0]
                return await cache.get_or_load(key, Loader("from the database"))

        assert await asyncio.wait_for(start_read_close(), BOUND) == "from the database"
    finally:
        hung.resume()


@pytest.mark.timeout(60)
async def test_after_the_cool_down_one_call_tries_the_hung_node_while_the_others_skip(
        redis_nodes: list[OwnRedis]) -> None:
    now = [0.0]
    hung = redis_nodes[2]
    name = node_name(hung.url)
    async with ShardedCache(_ring(redis_nodes), prefix=f"test:{uuid.uuid4().hex[:10]}:", clock=lambda: now[0]) as cache:
        keys = _keys_on(cache, name, 20, "c")
        stats = cache.stats()[name]
        hung.hang()
        try:
            await asyncio.wait_for(cache.invalidate(keys[0]), BOUND)  # times out: the node cools down
            assert (stats.errors, stats.skipped) == (1, 0)
            await cache.invalidate(keys[1])
            assert (stats.errors, stats.skipped) == (1, 1)
            now[0] += cache.cooldown
            loads = asyncio.gather(*(cache.get_or_load(key, Loader(key)) for key in keys))
            assert await asyncio.wait_for(loads, BOUND) == keys
            assert stats.errors == 2, "one trial call, not twenty"
            assert stats.skipped >= 1 + 19
        finally:
            hung.resume()
        now[0] += cache.cooldown
        await cache.set(keys[2], "back")
        assert (await cache.get(keys[2])) == (True, "back")
        assert stats.errors == 2
