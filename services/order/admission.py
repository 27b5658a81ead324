"""Admission control: POST /orders answers 429 with Retry-After while too many accepted orders are undecided.

An accepted order waits behind every order accepted before it (in the outbox, the queues, the coordinator),
so a backlog without a bound is a latency without a bound. The backlog counted is the orders still PENDING,
whatever their pattern: it is what the customer waits for. Its bound follows Little's law: as many orders as
the system decides in `TXLAB_ADMISSION_TARGET_SECONDS` (0.5 s) at the highest rate it decided them lately
(the rate alone falls while refused clients wait, and would close the door further), never fewer
than `FLOOR` (a few orders held up by a fault do not close the door) nor more than
`TXLAB_ADMISSION_MAX_PENDING` (200). So a fast pattern may hold a larger backlog than a slow one, and an
accepted order waits about the target for the orders ahead of it, whichever pattern it uses.

The backlog is counted every `SAMPLE_SECONDS`, plus the orders accepted since, so a burst cannot slip in
between two counts; the rate of decisions comes from the same counts. `TXLAB_ADMISSION_MAX_PENDING=0` turns
admission control off.

A request that finds the backlog full waits in line, first come first served, for at most
`TXLAB_ADMISSION_WAIT_SECONDS` (2 s): each count that finds orders decided lets as many waiting requests in as
there is room, in the order they came, and a request that comes while others wait queues behind them. Only a
request that waited that long, or finds as many others waiting as `max_pending`, is answered 429 with
Retry-After. Waiting costs a parked coroutine; a refusal costs the client a retry, and at 128 in flight the
retries were several requests per placed order, each a fresh draw in which an unlucky client could lose many
times in a row (POST's p99 reached 8 to 17 s). A waiting request is not accepted: nothing is placed until it
is let in, and the backlog's bound holds as before. `TXLAB_ADMISSION_WAIT_SECONDS=0` refuses at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time

import asyncpg
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("txlab.admission")

SAMPLE_SECONDS = 0.1
SMOOTHING_SECONDS = 2.0  # the decision rate is an exponential average over about this long
PEAK_SECONDS = 10.0  # the highest rate seen fades with this time constant
FLOOR = 32  # never refuse while fewer orders than this are undecided
RETRY_AFTER_SECONDS = 1  # Retry-After takes whole seconds

_PENDING = "SELECT count(*) FROM orders WHERE status = 'PENDING'"


class Overloaded(Exception):
    """Too many orders are undecided to accept another now."""


class Admission:
    def __init__(self, max_pending: int, target_seconds: float = 0.5, floor: int = FLOOR,
                 wait_seconds: float = 0.0) -> None:
        self.max_pending = max_pending
        self.target_seconds = target_seconds
        self.floor = floor
        self.wait_seconds = wait_seconds  # how long a request may wait in line for room before it is refused
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()  # first come, first let in
        self.pending = 0  # at the last count
        self.accepted = 0  # placed since the last count
        # admitted and not yet placed: a count whose snapshot came before their commit misses them, and they
        # must not be forgotten until the next count
        self.placing = 0
        self.rate = 0.0  # orders decided per second, averaged
        self.peak = 0.0  # the highest rate lately: what the system can decide, not only what it was given
        self.refused = 0

    @property
    def bound(self) -> int:
        """How many undecided orders are allowed now."""
        if self.target_seconds <= 0:
            return self.max_pending
        return min(self.max_pending, max(self.floor, int(self.peak * self.target_seconds)))

    @property
    def backlog(self) -> int:
        return self.pending + self.accepted + self.placing

    def _refuse(self, waited: float = 0.0) -> Overloaded:
        self.refused += 1
        backlog, bound = self.backlog, self.bound
        after = f" after waiting {waited:.1f} s" if waited else ""
        return Overloaded(f"{backlog} orders are still being settled (at most {bound} may be now, "
                          f"up to {self.peak:.0f} decided/s){after}; retry after {RETRY_AFTER_SECONDS} s")

    async def enter(self) -> None:
        """Count the order as accepted once there is room for it, waiting in line for at most `wait_seconds`;
        raise `Overloaded` when it waited that long, or the line is full."""
        if self.max_pending <= 0:
            return
        if not self.waiting and self.backlog < self.bound:
            self.placing += 1
            return
        if self.wait_seconds <= 0 or len(self.waiting) >= self.max_pending:
            raise self._refuse()
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await turn
        except TimeoutError:
            if self._let_in_already(turn):
                return  # let in at the last moment: it goes ahead
            raise self._refuse(self.wait_seconds) from None
        except BaseException:  # the client went away (cancelled)
            if self._let_in_already(turn):
                self.withdraw()  # its place goes to the next in line
            raise

    def _let_in_already(self, turn: asyncio.Future[None]) -> bool:
        """Whether a request that stopped waiting had been let in (its place counted); if not, it leaves the line."""
        if turn.done() and not turn.cancelled():
            return True
        if turn in self.waiting:
            self.waiting.remove(turn)
        return False

    def _let_in(self) -> None:
        """Let waiting requests in, first come first, while there is room."""
        bound = self.bound
        while self.waiting and self.backlog < bound:
            turn = self.waiting.popleft()
            if not turn.done():  # one cancelled a moment ago is still in line until its request leaves it
                self.placing += 1
                turn.set_result(None)

    def placed(self) -> None:
        """An admitted request placed its order (committed): it counts as accepted until a count includes it."""
        if self.max_pending > 0:
            self.placing -= 1
            self.accepted += 1

    def withdraw(self) -> None:
        """An admitted request placed nothing (it failed, or replayed an earlier order): do not count it."""
        if self.max_pending > 0:
            self.placing -= 1
            self._let_in()

    def counted(self, pending: int, accepted: int, seconds: float) -> None:
        """Take a new count: `pending` orders undecided, `accepted` of them admitted since the count before,
        which was `seconds` ago."""
        decided = max(0, self.pending + accepted - pending)
        weight = min(1.0, seconds / SMOOTHING_SECONDS)
        self.rate += weight * (decided / max(seconds, 1e-3) - self.rate)
        # while refused clients wait out their Retry-After, fewer orders come in and the rate falls below what
        # the system can do; a bound following it would starve the system, so it follows the recent peak
        self.peak = max(self.rate, self.peak * math.exp(-seconds / PEAK_SECONDS))
        self.pending = pending
        self.accepted -= accepted  # those were committed before the count, or are in it
        self._let_in()

    async def watch(self, dsn: str) -> None:
        """Count the undecided orders until cancelled, on a connection of its own (a count waiting behind busy
        requests for a pooled connection would let the orders accepted meanwhile pile up as if undecided);
        while the database is away, keep the last count."""
        last = time.monotonic()
        conn: asyncpg.Connection | None = None
        try:
            while self.max_pending > 0:
                await asyncio.sleep(SAMPLE_SECONDS)
                if self.pending == 0 and self.accepted == 0:  # idle: nothing to count until an order comes
                    last = time.monotonic()
                    continue
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(dsn, timeout=5)
                    accepted = self.accepted  # placed before the count began: in it
                    pending = await conn.fetchval(_PENDING, timeout=5) or 0
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        asyncpg.InternalClientError) as exc:  # the last: a count cut short by a restart left the
                    # connection mid-operation ("cannot switch to state 12"), and it ended the service once
                    log.debug("cannot count undecided orders (%r)", exc)
                    if conn is not None:
                        conn.terminate()
                        conn = None
                    continue
                now = time.monotonic()
                self.counted(pending, accepted, now - last)
                last = now
        finally:
            if conn is not None:
                conn.terminate()


TICKET = "txlab.admission"  # the scope key under which the route finds its request's `Ticket`


class Ticket:
    """An admitted request's place in the backlog: the route says `placed` once its order committed; otherwise,
    when the request ends (it failed, replayed an earlier order, or its body was refused), the place is given
    back to the next in line."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.settled = False

    def placed(self) -> None:
        if not self.settled:
            self.settled = True
            self.admission.placed()

    def withdraw(self) -> None:
        if not self.settled:
            self.settled = True
            self.admission.withdraw()


class AdmitInTurn:
    """`POST /orders` admitted, made to wait its turn, or refused, before its body is read: while the backlog is
    full a request waits in line (`Admission.enter`), and a refusal costs a check, not a request (FastAPI's body
    parsing, validation and error handling come after). The route finds the request's `Ticket` in the scope."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/orders"):
            await self.app(scope, receive, send)
            return
        try:
            await self.admission.enter()
        except Overloaded as exc:
            refusal = JSONResponse({"detail": str(exc)}, status_code=429,
                                   headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            await refusal(scope, receive, send)
            return
        ticket = scope[TICKET] = Ticket(self.admission)
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.withdraw()
