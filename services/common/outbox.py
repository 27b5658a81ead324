"""The local message table: outbox rows written in the business transaction, an inbox for dedupe, and
the relay that publishes outbox rows with publisher confirms.

Row states (as stored): PENDING -> SENT, or PENDING -> FAILED after `relay_max_attempts` failures: the
row is parked, visible and re-sendable through the admin API (`GET /outbox/failed`, `POST .../resend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.bus import Bus
from services.common.envelope import Envelope
from services.common.faults import FaultInjector
from services.common.settings import Settings

log = logging.getLogger("txlab.outbox")

PENDING, SENT, FAILED = "PENDING", "SENT", "FAILED"


def messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox and inbox tables every service database has."""
    outbox = sa.Table(
        "outbox", metadata,
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True)),
        sa.Column("routing_key", sa.Text, nullable=False),
        sa.Column("envelope", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default=PENDING),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    inbox = sa.Table(
        "inbox", metadata,
        sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    return outbox, inbox


def notify_channel(service: str) -> str:
    return f"{service}_outbox"


_META = sa.MetaData()
OUTBOX, INBOX = messaging_tables(_META)


@dataclass
class UnitOfWork:
    """One local transaction: the business effect, the inbox claim and the outbox rows commit together."""

    conn: AsyncConnection
    stale_keys: set[str] = field(default_factory=set)  # cached views to invalidate once committed

    async def claim(self, envelope: Envelope) -> bool:
        """Record `envelope` in the inbox; False when it was already processed (a duplicate)."""
        stmt = insert(INBOX).values(message_id=envelope.message_id, type=envelope.type)
        result = await self.conn.execute(stmt.on_conflict_do_nothing().returning(INBOX.c.message_id))
        return result.first() is not None

    async def emit(self, envelope: Envelope) -> None:
        """Add `envelope` to the outbox; it is published after this transaction commits."""
        await self.conn.execute(OUTBOX.insert().values(
            id=envelope.message_id, order_id=envelope.order_id, routing_key=envelope.type,
            envelope=envelope.to_dict()))


@contextlib.asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    async with engine.begin() as conn:
        yield UnitOfWork(conn)


def backoff_seconds(attempts: int) -> float:
    """Delay before the next attempt after `attempts` failures: 0.5 s doubling, capped at 60 s."""
    return min(0.5 * 2 ** max(attempts - 1, 0), 60.0)


class OutboxRelay:
    """Publishes PENDING outbox rows. Several relays may run against one database: rows are claimed
    with FOR UPDATE SKIP LOCKED, so each row is published by one relay at a time."""

    def __init__(self, engine: AsyncEngine, bus: Bus, settings: Settings, service: str,
                 faults: FaultInjector) -> None:
        self.engine = engine
        self.bus = bus
        self.settings = settings
        self.service = service
        self.faults = faults
        self._wake = asyncio.Event()
        self.published = 0

    async def run(self) -> None:
        """Publish due rows until cancelled: woken by NOTIFY, polling as a fallback; a lost LISTEN
        connection (the database restarting) is opened again, polling meanwhile."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
                self._wake.clear()
                try:
                    while await self.publish_batch() >= self.settings.relay_batch:
                        pass
                except Exception:
                    log.exception("relay pass failed; retrying")
                    await asyncio.sleep(self.settings.relay_poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_seconds)
        finally:
            if listener is not None:
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

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; return how many rows were claimed."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT id, routing_key, envelope, attempts FROM outbox "
                "WHERE status = 'PENDING' AND next_attempt_at <= now() "
                "ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": self.settings.relay_batch})).all()
            if not rows:
                return 0
            results = await asyncio.gather(*(self._publish(r.id, r.routing_key, r.envelope) for r in rows),
                                           return_exceptions=True)
            await self.faults.hit("relay.after_publish")
            sent = [r.id for r, res in zip(rows, results, strict=True) if res is None]
            if sent:
                await conn.execute(sa.text(
                    "UPDATE outbox SET status = 'SENT', sent_at = now(), attempts = attempts + 1 "
                    "WHERE id = ANY(:ids)"), {"ids": sent})
            for row, res in zip(rows, results, strict=True):
                if res is not None:
                    await self._record_failure(conn, row.id, row.attempts + 1, res)
            self.published += len(sent)
            return len(rows)

    async def _publish(self, row_id: uuid.UUID, routing_key: str, envelope: dict[str, Any]) -> None:
        if await self.faults.hit("relay.before_publish") == "drop":
            raise ConnectionError("injected drop: the broker never confirmed")
        body = json.dumps(envelope, separators=(",", ":")).encode()
        await self.bus.publish_raw(body, str(row_id), envelope["type"], routing_key)

    async def _record_failure(self, conn: AsyncConnection, row_id: uuid.UUID, attempts: int,
                              error: BaseException) -> None:
        parked = attempts >= self.settings.relay_max_attempts
        log.warning("outbox row %s attempt %d failed%s: %r", row_id, attempts,
                    " (FAILED: parked until re-sent)" if parked else "", error)
        await conn.execute(sa.text(
            "UPDATE outbox SET attempts = :a, last_error = :e, status = :s, "
            "next_attempt_at = now() + make_interval(secs => :d) WHERE id = :id"),
            {"a": attempts, "e": repr(error)[:500], "s": FAILED if parked else PENDING,
             "d": backoff_seconds(attempts), "id": row_id})


async def resend_failed(engine: AsyncEngine, row_id: uuid.UUID | None = None) -> int:
    """Put FAILED rows (one, or all) back to PENDING with a fresh attempt budget."""
    where = "status = 'FAILED'" + (" AND id = :id" if row_id else "")
    async with engine.begin() as conn:
        result = await conn.execute(sa.text(
            f"UPDATE outbox SET status = 'PENDING', attempts = 0, next_attempt_at = now() WHERE {where}"),
            {"id": row_id} if row_id else {})
        return result.rowcount
