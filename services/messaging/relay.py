"""The outbox relay: publishes due outbox rows with confirms.

Guarantees:
* Every row is published at least once; the consumers' inbox makes that exactly-once in effect.
* Several relays may share one table: a relay claims a batch under a lease (`claimed_by`, `claimed_until`)
  in one statement, publishes with no transaction open, and settles the batch in another (one statement when
  every row was sent: a single statement needs no BEGIN and COMMIT). A relay
  that dies holding a lease is replaced when the lease runs out, or at once when it restarts (it takes back
  its own leases by its stable id).
* RabbitMQ or PostgreSQL being unreachable is waited out with capped backoff and never counts against a row;
  only RabbitMQ refusing a message is an attempt, and a row refused `relay_max_attempts` times is FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import execute_alone
from services.common.faults import FaultInjector
from services.common.settings import Settings
from services.messaging.connection import capped_backoff
from services.messaging.failures import is_transient
from services.messaging.outbox import OUTBOX, OutboxStatus, notify_channel, seconds
from services.messaging.publisher import BrokerUnavailable, Publisher, PublishRefused
from services.messaging.retention import prune

log = logging.getLogger("txlab.relay")

MAX_WAIT = 2.0  # longest pause between tries while a server is unreachable


def backoff_seconds(attempts: int) -> float:
    """Delay before the next attempt after `attempts` refusals: 0.5 s doubling, capped at 60 s."""
    return min(0.5 * 2 ** max(attempts - 1, 0), 60.0)


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    routing_key: str
    body: str  # the envelope as PostgreSQL prints the JSONB: published as it is, never decoded here
    type: str
    occurred_at: str
    attempts: int
    traceparent: str | None  # the span that wrote the row: the publish is its child
    order_id: uuid.UUID | None


def _worlds_fault(error: BaseException) -> bool:
    return isinstance(error, BrokerUnavailable | asyncio.CancelledError) or is_transient(error)


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, publisher: Publisher, settings: Settings, service: str,
                 faults: FaultInjector, relay_id: str | None = None) -> None:
        self.engine = engine
        self.publisher = publisher
        self.settings = settings
        self.service = service
        self.faults = faults
        self.relay_id = relay_id or f"{service}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._next_prune = 0.0
        self.published = 0
        self.refused = 0

    async def run(self) -> None:
        """Publish due rows until cancelled: woken by NOTIFY, polling as a fallback."""
        listener: asyncpg.Connection | None = None
        waits = 0
        leases_released = False
        try:
            while True:
                await self.publisher.wait_connected()
                try:
                    if not leases_released:  # rows a previous run of this relay held: publish them now
                        await self.release_own_leases()
                        leases_released = True
                    if listener is None or listener.is_closed():
                        listener = await self._listen()
                    self._wake.clear()
                    while await self.publish_batch() >= self.settings.relay_batch:
                        pass
                    await self._prune_when_due()
                    waits = 0
                except Exception as exc:
                    if not (is_transient(exc) or isinstance(exc, BrokerUnavailable)):
                        raise
                    waits += 1
                    if waits == 1 or waits % 50 == 0:
                        log.warning("relay waiting for a server (%r); retrying every %.1fs at most", exc, MAX_WAIT)
                    await asyncio.sleep(capped_backoff(waits, 0.1, MAX_WAIT))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_seconds)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()

    async def _listen(self) -> asyncpg.Connection | None:
        try:
            listener = await asyncpg.connect(self.settings.raw_dsn(self.service), timeout=5)
            await listener.add_listener(notify_channel(self.service), lambda *_: self._wake.set())
            return listener
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot LISTEN for outbox rows (%r); polling every %.1fs", exc,
                        self.settings.relay_poll_seconds)
            return None

    async def release_own_leases(self) -> int:
        """Give back the leases this relay's id holds: after a restart they belong to no running relay."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.update(OUTBOX).where(OUTBOX.c.claimed_by == self.relay_id)
                                        .values(claimed_by=None, claimed_until=None))
            return result.rowcount

    async def _claim(self) -> list[Claimed]:
        lease = seconds(self.settings.relay_lease_seconds)
        due = (sa.select(OUTBOX.c.id).where(
            OUTBOX.c.status == OutboxStatus.PENDING, OUTBOX.c.next_attempt_at <= sa.func.now(),
            sa.or_(OUTBOX.c.claimed_until.is_(None), OUTBOX.c.claimed_until < sa.func.now(),
                   OUTBOX.c.claimed_by == self.relay_id))
            .order_by(OUTBOX.c.created_at).limit(self.settings.relay_batch).with_for_update(skip_locked=True))
        stmt = (sa.update(OUTBOX).where(OUTBOX.c.id.in_(due.scalar_subquery()))
                .values(claimed_by=self.relay_id, claimed_until=sa.func.now() + lease)
                .returning(OUTBOX.c.id, OUTBOX.c.routing_key, sa.cast(OUTBOX.c.envelope, sa.Text),
                           OUTBOX.c.envelope["type"].astext, OUTBOX.c.envelope["occurred_at"].astext,
                           OUTBOX.c.attempts, OUTBOX.c.envelope["traceparent"].astext, OUTBOX.c.order_id))
        rows = (await execute_alone(self.engine, stmt)).all()
        return sorted((Claimed(*r) for r in rows), key=lambda c: c.occurred_at or "")

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; return how many were settled (sent or refused), not given back."""
        rows = await self._claim()
        if not rows:
            return 0
        results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
        await self.faults.hit("relay.after_publish")
        if all(r is None for r in results):  # all sent, the usual case: one statement settles the batch
            await execute_alone(self.engine, self._sent([r.id for r in rows]))
            self.published += len(rows)
        else:
            async with self.engine.begin() as conn:
                await self._settle(conn, rows, results)
        unavailable = next((r for r in results if isinstance(r, BrokerUnavailable)), None)
        if unavailable is not None:
            raise unavailable
        return sum(1 for r in results if r is None or not _worlds_fault(r))

    async def _publish(self, row: Claimed) -> None:
        if await self.faults.hit("relay.before_publish") == "drop":
            raise PublishRefused("injected drop: RabbitMQ refused the message")
        await self.publisher.publish_raw(row.body.encode(), str(row.id), row.type, row.routing_key, row.traceparent,
                                         row.order_id)

    def _sent(self, ids: list[uuid.UUID]) -> sa.Update:
        return sa.update(OUTBOX).where(OUTBOX.c.id.in_(ids), OUTBOX.c.claimed_by == self.relay_id).values(
            status=OutboxStatus.SENT, sent_at=sa.func.now(), attempts=OUTBOX.c.attempts + 1, claimed_by=None,
            claimed_until=None)

    async def _settle(self, conn: AsyncConnection, rows: list[Claimed], results: list[Any]) -> None:
        mine = OUTBOX.c.claimed_by == self.relay_id
        released = dict(claimed_by=None, claimed_until=None)
        sent = [r.id for r, res in zip(rows, results, strict=True) if res is None]
        if sent:
            await conn.execute(self._sent(sent))
            self.published += len(sent)
        waiting = [r.id for r, res in zip(rows, results, strict=True) if res is not None and _worlds_fault(res)]
        if waiting:  # the world's failure: give the rows back untouched
            await conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(waiting), mine).values(**released))
        for row, res in zip(rows, results, strict=True):
            if res is None or row.id in waiting:
                continue
            attempts = row.attempts + 1
            failed = attempts >= self.settings.relay_max_attempts
            self.refused += 1
            log.warning("outbox row %s attempt %d refused%s: %r", row.id, attempts,
                        " (FAILED: parked until re-sent)" if failed else "", res)
            await conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id == row.id, mine).values(
                attempts=attempts, last_error=repr(res)[:500],
                status=OutboxStatus.FAILED if failed else OutboxStatus.PENDING,
                next_attempt_at=sa.func.now() + seconds(backoff_seconds(attempts)),
                **released))

    async def _prune_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self.settings.prune_interval_seconds
        removed = await prune(self.engine, self.settings.message_retention_hours)
        if any(removed.values()):
            log.info("pruned %d SENT outbox rows and %d inbox rows older than %.0f h", removed["outbox"],
                     removed["inbox"], self.settings.message_retention_hours)
