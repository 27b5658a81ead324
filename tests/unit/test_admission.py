"""Admission control's arithmetic: the orders counted undecided plus those accepted since the count, against a
bound of as many orders as are decided in the target time (Little's law), between a floor and a cap."""

import asyncio

import httpx
import pytest
from starlette.responses import JSONResponse

from services.order.admission import TICKET, Admission, AdmitInTurn, Overloaded


async def test_orders_are_refused_once_the_undecided_ones_reach_the_bound():
    admission = Admission(max_pending=5)
    admission.pending = 3
    await admission.enter()
    await admission.enter()  # 3 counted + 2 accepted since: at the bound now
    with pytest.raises(Overloaded, match=r"5 orders are still being settled \(at most 5 may be now, "
                                         r"up to 0 decided/s\); retry after 1 s"):
        await admission.enter()
    assert admission.refused == 1


def test_the_bound_is_what_the_system_decides_in_the_target_time():
    admission = Admission(max_pending=1000, target_seconds=1.0, floor=10)
    assert admission.bound == 10, "no rate measured yet: the floor"
    for _ in range(100):  # 10 s of counts: 40 undecided each time, 8 admitted and 8 decided per 0.1 s
        admission.accepted += 8
        admission.counted(pending=40, accepted=8, seconds=0.1)
        admission.pending = 40
    assert admission.rate == pytest.approx(80, rel=0.01)
    assert admission.bound in (79, 80)
    for _ in range(10):  # a second of fewer orders coming in (clients waiting out a 429): the bound holds
        admission.counted(pending=40, accepted=0, seconds=0.1)
    assert admission.rate < 50 and admission.bound >= 70
    for _ in range(600):  # a minute of a pipeline slowed to 20 decided/s: the bound follows it down
        admission.accepted += 2
        admission.counted(pending=40, accepted=2, seconds=0.1)
    assert admission.bound == 20
    admission.target_seconds = 0.0  # no target: the cap alone
    assert admission.bound == 1000


def test_the_cap_holds_however_fast_orders_are_decided():
    admission = Admission(max_pending=50, target_seconds=1.0, floor=10)
    admission.peak = 10_000.0
    assert admission.bound == 50


async def test_a_new_count_opens_the_door_again():
    admission = Admission(max_pending=2)
    for _ in range(2):
        await admission.enter()
        admission.placed()
    with pytest.raises(Overloaded):
        await admission.enter()
    admission.counted(pending=0, accepted=2, seconds=0.1)  # both decided already
    assert admission.accepted == 0 and admission.rate > 0
    await admission.enter()


async def test_a_cap_of_zero_never_refuses():
    admission = Admission(max_pending=0)
    admission.pending = 10_000
    for _ in range(100):
        await admission.enter()
    assert admission.refused == 0


async def test_an_order_placed_after_the_count_began_is_not_forgotten():
    """A count whose snapshot was taken before an admitted order committed misses it: the order still counts
    until a later count includes it (an undercount would let the backlog pass its bound)."""
    admission = Admission(max_pending=3)
    for _ in range(3):
        await admission.enter()  # three requests placing their orders
    accepted_at_start = admission.accepted  # the count begins: none placed yet
    for _ in range(3):
        admission.placed()  # they commit after the count's snapshot
    admission.counted(pending=0, accepted=accepted_at_start, seconds=0.1)  # the snapshot saw none of them
    with pytest.raises(Overloaded):
        await admission.enter()
    admission.counted(pending=3, accepted=admission.accepted, seconds=0.1)  # the next count sees them
    with pytest.raises(Overloaded):
        await admission.enter()
    admission.counted(pending=0, accepted=0, seconds=0.1)  # decided
    await admission.enter()
    admission.withdraw()  # it placed nothing
    assert (admission.pending, admission.accepted, admission.placing) == (0, 0, 0)


async def test_a_full_backlog_refuses_a_post_before_its_body_is_read():
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await JSONResponse({"ok": True}, status_code=201)(scope, receive, send)

    async def body_never_read():
        raise AssertionError("a refused request's body is not read")

    admission = Admission(max_pending=2)
    admission.pending = 2
    refuse = AdmitInTurn(app, admission)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await refuse({"type": "http", "method": "POST", "path": "/orders", "headers": []}, body_never_read, send)
    assert sent[0]["status"] == 429 and (b"retry-after", b"1") in sent[0]["headers"]
    assert b"2 orders are still being settled" in sent[1]["body"]
    assert reached == [] and admission.refused == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(refuse), base_url="http://test") as client:
        assert (await client.get("/orders")).status_code == 201  # reads are never refused
        admission.pending = 1
        assert (await client.post("/orders", json={})).status_code == 201  # the route counts it (admit)
    assert reached == ["/orders", "/orders"]


async def test_the_count_goes_on_after_a_connection_left_mid_operation(monkeypatch):
    """PostgreSQL restarting during a count can leave asyncpg's connection mid-operation: the next statement
    raises InternalClientError. The count opens a new connection and goes on; the service goes on."""
    import asyncio

    import asyncpg

    from services.order import admission as module

    class Conn:
        def __init__(self, answer):
            self.answer = answer
            self.terminated = False

        def is_closed(self):
            return self.terminated

        def terminate(self):
            self.terminated = True

        async def fetchval(self, query, timeout=None):
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer

    opened = [Conn(asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")),
              Conn(7)]

    async def connect(dsn, timeout=None):
        return opened.pop(0) if opened else Conn(7)

    monkeypatch.setattr(module.asyncpg, "connect", connect)
    monkeypatch.setattr(module, "SAMPLE_SECONDS", 0.01)
    admission = Admission(max_pending=100)
    await admission.enter()
    admission.placed()  # an order to count
    watching = asyncio.create_task(admission.watch("postgresql://unused"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if admission.pending == 7:
            break
    assert not watching.done(), watching.exception() if watching.done() else None
    watching.cancel()
    assert admission.pending == 7 and not opened


async def _turns() -> None:
    """Let the loop run what is ready: a request let in resumes a few steps after its turn came."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _waiters(admission: Admission, names: str, let_in: list[str]) -> list[asyncio.Task]:
    """One waiting request per letter of `names`, each in line before the next comes; `let_in` records the order
    in which they get in."""
    async def request(name: str) -> None:
        await admission.enter()
        let_in.append(name)

    tasks = []
    for name in names:
        tasks.append(asyncio.create_task(request(name)))
        await asyncio.sleep(0)  # it reaches the line before the next request comes
    return tasks


async def test_a_full_backlog_lets_waiting_requests_in_first_come_first_served():
    admission = Admission(max_pending=10, floor=2, wait_seconds=5.0)  # a bound of 2 (no rate yet), a line of 10
    admission.pending = 2
    let_in: list[str] = []
    tasks = await _waiters(admission, "abc", let_in)
    assert len(admission.waiting) == 3 and let_in == []
    admission.counted(pending=0, accepted=0, seconds=0.1)  # both decided: room for two
    tasks += await _waiters(admission, "d", let_in)  # comes now, while c waits: it queues behind c
    await _turns()
    assert let_in == ["a", "b"] and admission.placing == 2 and len(admission.waiting) == 2
    admission.withdraw()  # a placed nothing (a replay): its place goes to the next in line
    await _turns()
    assert let_in == ["a", "b", "c"]
    admission.placed()
    admission.placed()  # b and c placed their orders
    admission.counted(pending=1, accepted=2, seconds=0.1)  # one of them decided already
    await asyncio.gather(*tasks)
    assert let_in == ["a", "b", "c", "d"] and not admission.waiting and admission.refused == 0


async def test_a_request_that_waited_its_limit_is_refused_and_leaves_the_line():
    admission = Admission(max_pending=2, wait_seconds=0.05)
    admission.pending = 2
    with pytest.raises(Overloaded, match=r"2 orders are still being settled \(at most 2 may be now, up to 0 "
                                         r"decided/s\) after waiting 0.1 s; retry after 1 s"):
        await admission.enter()
    assert not admission.waiting and admission.refused == 1 and admission.placing == 0


async def test_a_full_line_refuses_at_once():
    admission = Admission(max_pending=2, wait_seconds=5.0)
    admission.pending = 2
    tasks = await _waiters(admission, "ab", [])
    with pytest.raises(Overloaded):  # as many wait as may be undecided: no more
        await asyncio.wait_for(admission.enter(), 1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not admission.waiting and admission.placing == 0


async def test_a_client_gone_while_it_waited_leaves_the_line_or_hands_its_place_on():
    admission = Admission(max_pending=10, floor=1, wait_seconds=5.0)
    admission.pending = 1
    let_in: list[str] = []
    a, b, c = await _waiters(admission, "abc", let_in)
    a.cancel()  # gone while waiting: out of the line
    await asyncio.gather(a, return_exceptions=True)
    assert len(admission.waiting) == 2
    admission.counted(pending=0, accepted=0, seconds=0.1)  # room for one: b is let in...
    b.cancel()  # ...and goes away before it runs: its place goes to c
    await asyncio.gather(b, c, return_exceptions=True)
    assert let_in == ["c"] and admission.placing == 1 and not admission.waiting


async def test_a_waiting_post_is_placed_once_there_is_room_and_a_failed_one_gives_its_place_back():
    placed: list[int] = []

    async def app(scope, receive, send):
        body = (await receive())["body"]
        if body == b"bad":
            await JSONResponse({"detail": "bad"}, status_code=422)(scope, receive, send)
            return
        scope[TICKET].placed()
        placed.append(1)
        await JSONResponse({"ok": True}, status_code=201)(scope, receive, send)

    admission = Admission(max_pending=2, wait_seconds=5.0)
    admission.pending = 2
    async with httpx.AsyncClient(transport=httpx.ASGITransport(AdmitInTurn(app, admission)),
                                 base_url="http://test") as client:
        good = asyncio.create_task(client.post("/orders", content=b"good"))
        bad = asyncio.create_task(client.post("/orders", content=b"bad"))
        while len(admission.waiting) < 2:  # noqa: ASYNC110 (the line is what the test watches)
            await asyncio.sleep(0.01)
        admission.counted(pending=0, accepted=0, seconds=0.1)
        assert [(await good).status_code, (await bad).status_code] == [201, 422]
    assert (admission.placing, admission.accepted, admission.refused) == (0, 1, 0), "the failed one gave it back"
