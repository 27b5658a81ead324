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
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import Sql, fetch_alone, transaction
from services.common.faults import FaultInjector
from services.common.settings import Settings
from services.messaging.connection import capped_backoff
from services.messaging.failures import is_transient
from services.messaging.outbox import OUTBOX, OutboxStatus, notify_channel
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


# Claim a batch of due rows under a lease, in one statement: those no live relay holds, or this relay's own
_CLAIM = (
    "UPDATE outbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2) WHERE id IN "
    "(SELECT id FROM outbox WHERE status = 'PENDING' AND next_attempt_at <= now() "
    "AND (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1) "
    "ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, routing_key, CAST(envelope AS text), envelope->>'type', envelope->>'occurred_at', attempts, "
    "envelope->>'traceparent', order_id")
_SENT = ("UPDATE outbox SET status = 'SENT', sent_at = now(), attempts = attempts + 1, claimed_by = NULL, "
         "claimed_until = NULL WHERE id = ANY($1::uuid[]) AND claimed_by = $2")
_RELEASE = "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE id = ANY($1::uuid[]) AND claimed_by = $2"
_REFUSED = ("UPDATE outbox SET attempts = $3, last_error = $4, status = $5, "
            "next_attempt_at = now() + make_interval(secs => $6), claimed_by = NULL, claimed_until = NULL "
            "WHERE id = $1 AND claimed_by = $2")


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
        rows = await fetch_alone(self.engine, _CLAIM, self.relay_id, self.settings.relay_lease_seconds,
                                 self.settings.relay_batch)
        return sorted((Claimed(*r) for r in rows), key=lambda c: c.occurred_at or "")

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; return how many were settled (sent or refused), not given back."""
        rows = await self._claim()
        if not rows:
            return 0
        results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
        await self.faults.hit("relay.after_publish")
        if all(r is None for r in results):  # all sent, the usual case: one statement settles the batch
            await fetch_alone(self.engine, _SENT, [r.id for r in rows], self.relay_id)
            self.published += len(rows)
        else:
            async with transaction(self.engine) as db:
                await self._settle(db, rows, results)
        unavailable = next((r for r in results if isinstance(r, BrokerUnavailable)), None)
        if unavailable is not None:
            raise unavailable
        return sum(1 for r in results if r is None or not _worlds_fault(r))

    async def _publish(self, row: Claimed) -> None:
        if await self.faults.hit("relay.before_publish") == "drop":
            raise PublishRefused("injected drop: RabbitMQ refused the message")
        await self.publisher.publish_raw(row.body.encode(), str(row.id), row.type, row.routing_key, row.traceparent,
                                         row.order_id)

    async def _settle(self, db: Sql, rows: list[Claimed], results: list[Any]) -> None:
        sent = [r.id for r, res in zip(rows, results, strict=True) if res is None]
        if sent:
            await db.execute(_SENT, sent, self.relay_id)
            self.published += len(sent)
        waiting = [r.id for r, res in zip(rows, results, strict=True) if res is not None and _worlds_fault(res)]
        if waiting:  # the world's failure: give the rows back untouched
            await db.execute(_RELEASE, waiting, self.relay_id)
        for row, res in zip(rows, results, strict=True):
            if res is None or row.id in waiting:
                continue
            attempts = row.attempts + 1
            failed = attempts >= self.settings.relay_max_attempts
            self.refused += 1
            log.warning("outbox row %s attempt %d refused%s: %r", row.id, attempts,
                        " (FAILED: parked until re-sent)" if failed else "", res)
            await db.execute(_REFUSED, row.id, self.relay_id, attempts, repr(res)[:500],
                             OutboxStatus.FAILED if failed else OutboxStatus.PENDING, backoff_seconds(attempts))

    async def _prune_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self.settings.prune_interval_seconds
        removed = await prune(self.engine, self.settings.message_retention_hours)
        if any(removed.values()):
            log.info("pruned %d SENT outbox rows and %d inbox rows older than %.0f h", removed["outbox"],
                     removed["inbox"], self.settings.message_retention_hours)
