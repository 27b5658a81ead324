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
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, max_pending: int, target_seconds: float = 0.5, floor: int = FLOOR) -> None:
        self.max_pending = max_pending
        self.target_seconds = target_seconds
        self.floor = floor
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

    def check(self) -> None:
        """Raise `Overloaded` when the backlog is at its bound."""
        if self.max_pending <= 0:
            return
        backlog, bound = self.pending + self.accepted + self.placing, self.bound
        if backlog >= bound:
            self.refused += 1
            raise Overloaded(f"{backlog} orders are still being settled (at most {bound} may be now, "
                             f"up to {self.peak:.0f} decided/s); retry after {RETRY_AFTER_SECONDS} s")

    def admit(self) -> None:
        """Raise `Overloaded` when the backlog is at its bound; otherwise count the order as accepted."""
        self.check()
        if self.max_pending > 0:
            self.placing += 1

    def placed(self) -> None:
        """An admitted request placed its order (committed): it counts as accepted until a count includes it."""
        if self.max_pending > 0:
            self.placing -= 1
            self.accepted += 1

    def withdraw(self) -> None:
        """An admitted request placed nothing (it failed, or replayed an earlier order): do not count it."""
        if self.max_pending > 0:
            self.placing -= 1

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


class RefuseWhenFull:
    """`POST /orders` refused before its body is read: while the backlog is full a refusal costs a check, not a
    request (at 128 in flight the clients' retries are several refusals per placed order, and each went through
    FastAPI's body parsing, validation and error handling first). An order admitted here is counted by
    `Admission.admit` in the route, which can still refuse it."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/orders":
            try:
                self.admission.check()
            except Overloaded as exc:
                refusal = JSONResponse({"detail": str(exc)}, status_code=429,
                                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
