"""The KV client follows the leader, its retried writes apply exactly once across leader kills, and it
survives an expired session without applying a write twice."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from raft.client import KVClient, SessionExpired


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


class _Recorder:
    """Wraps an aiohttp session: records (method, path, status) of every answer received, and loses the
    first answer other than a redirect to a request matching `lose` (the server applied that request),
    `stall` seconds after it arrived."""

    def __init__(self, session, lose: tuple[str, str] | None = None, stall: float = 0.0) -> None:
        self.session, self.lose, self.stall = session, lose, stall
        self.answers: list[tuple[str, str, int]] = []

    def request(self, method, url, **kwargs):
        return _Recorded(self, method, "/" + url.split("/", 3)[3], self.session.request(method, url, **kwargs))

    async def close(self) -> None:
        await self.session.close()


class _Recorded:
    def __init__(self, recorder: _Recorder, method: str, path: str, ctx) -> None:
        self.recorder, self.method, self.path, self.ctx = recorder, method, path, ctx

    async def __aenter__(self):
        response = await self.ctx.__aenter__()
        if (self.method, self.path) == self.recorder.lose and response.status != 307:
            self.recorder.lose = None
            await response.read()
            await self.ctx.__aexit__(None, None, None)
            await asyncio.sleep(self.recorder.stall)
            raise aiohttp.ServerDisconnectedError()
        self.recorder.answers.append((self.method, self.path, response.status))
        return response

    async def __aexit__(self, *exc):
        return await self.ctx.__aexit__(*exc)


async def test_a_client_idle_past_its_session_timeout_registers_anew_and_its_next_write_applies_once(
        make_cluster, monkeypatch):
    monkeypatch.setenv("TXLAB_RAFT_SESSION_TIMEOUT", "1")
    cluster = make_cluster(3)
    cluster.start()
    await asyncio.to_thread(cluster.wait_leader)
    async with KVClient([cluster.http_url(i) for i in (1, 2, 3)]) as kv:
        kv._session = recorder = _Recorder(kv._session)
        await kv.put("counter", 0)
        first = kv.session_id
        await asyncio.sleep(1.5)  # idle past the timeout: the next write's log time expires the session
        assert await kv.cas("counter", 0, 1) is True  # refused, certainly not applied, so sent again
        assert kv.session_id is not None and kv.session_id != first
        assert await kv.get("counter") == 1
    answered = [(m, p, s) for m, p, s in recorder.answers if s != 307]
    assert answered[-4:] == [("POST", "/kv/counter/cas", 410), ("POST", "/sessions", 200),
                             ("POST", "/kv/counter/cas", 200), ("GET", "/kv/counter", 200)]


async def test_a_write_whose_answer_was_lost_until_its_session_expired_raises_and_is_not_applied_twice(
        make_cluster, monkeypatch):
    monkeypatch.setenv("TXLAB_RAFT_SESSION_TIMEOUT", "1")
    cluster = make_cluster(3)
    cluster.start()
    await asyncio.to_thread(cluster.wait_leader)
    async with KVClient([cluster.http_url(i) for i in (1, 2, 3)]) as kv:
        await kv.put("counter", 0)
        await kv.put("log", [])
        first = kv.session_id
        # the put is applied, its answer is lost, and the retry arrives after the session expired
        kv._session = recorder = _Recorder(kv._session, lose=("PUT", "/kv/log"), stall=1.5)
        with pytest.raises(SessionExpired, match="may or may not have been applied"):
            await kv.put("log", ["a"])
        assert ("PUT", "/kv/log", 410) in recorder.answers  # the retry was refused, not re-applied
        # the client goes on with a fresh session
        assert await kv.cas("counter", 0, 1) is True
        assert kv.session_id is not None and kv.session_id != first
        assert await kv.get("log") == ["a"] and await kv.get("counter") == 1
