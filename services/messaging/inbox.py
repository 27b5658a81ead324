"""The inbox table and the unit of work: a consumed message is claimed in the inbox, applied, and the events
it causes are written to the outbox, all in one local transaction, so a duplicate is applied once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.envelope import Envelope
from services.messaging.outbox import METADATA, OUTBOX

INBOX = sa.Table(
    "inbox", METADATA,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


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
        """Add `envelope` to the outbox; the relay publishes it after this transaction commits."""
        await self.conn.execute(OUTBOX.insert().values(
            id=envelope.message_id, order_id=envelope.order_id, routing_key=envelope.type,
            envelope=envelope.to_dict()))


@contextlib.asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    async with engine.begin() as conn:
        yield UnitOfWork(conn)
