"""The KV client follows the leader and its retried writes apply exactly once, across leader kills."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from raft.client import KVClient


async def test_client_finds_the_leader_from_any_node_and_round_trips(make_cluster):
    cluster = make_cluster(3)
    cluster.start()
    leader = await asyncio.to_thread(cluster.wait_leader)
    follower_first = [cluster.http_url(i) for i in (1, 2, 3) if i != leader] + [cluster.http_url(leader)]
    async with KVClient(follower_first) as kv:
        await kv.put("a/b c", {"x": [1, 2]})
        assert await kv.get("a/b c") == {"x": [1, 2]}
        assert await kv.get("missing", default="none") == "none"
        assert await kv.cas("a/b c", {"x": [1, 2]}, 3) is True
        assert await kv.cas("a/b c", 99, 4) is False
        assert await kv.delete("a/b c") is True
        assert await kv.delete("a/b c") is False


async def test_cas_increments_retried_across_leader_kills_each_apply_exactly_once(make_cluster):
    cluster = make_cluster(3)
    cluster.start()
    await asyncio.to_thread(cluster.wait_leader)
    urls = [cluster.http_url(i) for i in (1, 2, 3)]
    done = 0

    async def killer() -> None:
        for _ in range(2):
            await asyncio.sleep(0.6)
            leader = await asyncio.to_thread(cluster.wait_leader)
            await asyncio.to_thread(cluster.kill, leader, signal.SIGKILL)
            await asyncio.sleep(0.4)
            await asyncio.to_thread(cluster.start_node, leader)

    async with KVClient(urls, request_timeout=1.0) as kv:
        kill = asyncio.create_task(killer())
        await kv.put("counter", 0)
        while not kill.done() or done < 150:
            # a retried increment whose first attempt was applied must report the first outcome (swapped),
            # not a conflict with its own effect
            assert await kv.cas("counter", done, done + 1), f"increment {done + 1} was lost or doubled"
            done += 1
        await kill
        assert await kv.get("counter") == done


class _LoseEveryThirdAnswer:
    """Wraps an aiohttp session: every third request reaches the server, but its answer is lost."""

    def __init__(self, session) -> None:
        self.session = session
        self.calls = 0

    def request(self, *args, **kwargs):
        self.calls += 1
        return _Lost(self.session.request(*args, **kwargs), lose=self.calls % 3 == 0)

    async def close(self) -> None:
        await self.session.close()


class _Lost:
    def __init__(self, ctx, lose: bool) -> None:
        self.ctx, self.lose = ctx, lose

    async def __aenter__(self):
        response = await self.ctx.__aenter__()
        if self.lose:
            await response.read()  # the server applied it and answered...
            await self.ctx.__aexit__(None, None, None)
            raise aiohttp.ServerDisconnectedError()  # ...but the answer never arrives
        return response

    async def __aexit__(self, *exc):
        return await self.ctx.__aexit__(*exc)


async def test_a_write_whose_answer_was_lost_is_retried_without_applying_twice(make_cluster):
    cluster = make_cluster(3)
    cluster.start()
    await asyncio.to_thread(cluster.wait_leader)
    async with KVClient([cluster.http_url(i) for i in (1, 2, 3)]) as kv:
        kv._session = _LoseEveryThirdAnswer(kv._session)
        await kv.put("counter", 0)
        for n in range(30):
            # without the session table the retry would see its own effect and answer "not swapped"
            assert await kv.cas("counter", n, n + 1) is True
        assert kv._session.calls > 40  # answers really were lost and retried
        assert await kv.get("counter") == 30
