"""The outbox table (the local message table): rows written in the business transaction, published by the
relay afterwards.

States (`OutboxStatus`, guarded by a CHECK constraint): PENDING -> SENT once RabbitMQ confirmed the message,
or PENDING -> FAILED after `relay_max_attempts` failures of the message's own (RabbitMQ refused it). A FAILED
row is visible through the admin API and can be re-sent. While a relay publishes a row it holds a lease on it
(`claimed_by`, `claimed_until`), not a row lock: no transaction stays open while it waits on the network.
"""

from __future__ import annotations

import uuid
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine


class OutboxStatus(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"


METADATA = sa.MetaData()

OUTBOX = sa.Table(
    "outbox", METADATA,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True)),
    sa.Column("routing_key", sa.Text, nullable=False),
    sa.Column("envelope", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default=OutboxStatus.PENDING.value),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("last_error", sa.Text),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_until", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
)


def seconds(value: float) -> sa.ColumnElement[object]:
    """An SQL interval of `value` seconds."""
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, sa.cast(value, sa.Float))


def notify_channel(service: str) -> str:
    """The LISTEN/NOTIFY channel an insert into the service's outbox wakes the relay on."""
    return f"{service}_outbox"


async def resend_failed(engine: AsyncEngine, row_id: uuid.UUID | None = None) -> int:
    """Put FAILED rows (one, or all) back to PENDING with a fresh attempt budget; return how many."""
    stmt = (sa.update(OUTBOX).where(OUTBOX.c.status == OutboxStatus.FAILED)
            .values(status=OutboxStatus.PENDING, attempts=0, next_attempt_at=sa.func.now()))
    if row_id is not None:
        stmt = stmt.where(OUTBOX.c.id == row_id)
    async with engine.begin() as conn:
        return (await conn.execute(stmt)).rowcount
