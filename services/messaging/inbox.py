"""The inbox table and the unit of work: a consumed message is claimed in the inbox, applied, and the events
it causes are written to the outbox, all in one local transaction, so a duplicate is applied once.

The statements are built once (a statement built per call costs SQLAlchemy a cache key each time), and a
unit of work writes its outbox rows together just before it commits, however many it emitted."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.envelope import Envelope
from services.messaging.outbox import METADATA, OUTBOX

INBOX = sa.Table(
    "inbox", METADATA,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


R = TypeVar("R")

# One statement claims a whole batch: the ids that come back are the messages not seen before
_CLAIM = sa.text(
    "INSERT INTO inbox (message_id, type) SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING message_id")
_EMIT = OUTBOX.insert()


@dataclass
class UnitOfWork:
    """One local transaction: the business effect, the inbox claims and the outbox rows commit together."""

    conn: AsyncConnection
    stale_keys: set[str] = field(default_factory=set)  # cached views to invalidate once committed
    emitted: list[dict[str, object]] = field(default_factory=list)  # outbox rows, written before the commit
    repositories: dict[type, Any] = field(default_factory=dict)

    def repository(self, kind: Callable[[AsyncConnection], R]) -> R:
        """The unit of work's one repository of `kind`: what it loaded and changed is shared by every message
        of a batch, and what it holds back is written by `flush`."""
        if kind not in self.repositories:
            self.repositories[kind] = kind(self.conn)
        return self.repositories[kind]

    async def claim(self, envelope: Envelope) -> bool:
        """Record `envelope` in the inbox; False when it was already processed (a duplicate)."""
        return bool(await self.claim_all([envelope]))

    async def claim_all(self, envelopes: Sequence[Envelope]) -> set[uuid.UUID]:
        """Record `envelopes` in the inbox; return the ids of those not processed before (each once)."""
        rows = await self.conn.execute(_CLAIM, {"ids": [e.message_id for e in envelopes],
                                                "types": [e.type for e in envelopes]})
        return {r.message_id for r in rows}

    async def emit(self, envelope: Envelope) -> None:
        """Add `envelope` to the outbox; the relay publishes it after this transaction commits."""
        self.emitted.append({"id": envelope.message_id, "order_id": envelope.order_id,
                             "routing_key": envelope.type, "envelope": envelope.to_dict()})

    async def flush(self) -> None:
        """Write what the repositories hold back, then the emitted outbox rows (one executemany; their
        NOTIFYs reach the relay as one, at the commit)."""
        for repository in self.repositories.values():
            if hasattr(repository, "flush"):
                await repository.flush()
        if self.emitted:
            rows, self.emitted = self.emitted, []
            await self.conn.execute(_EMIT, rows)


@contextlib.asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    async with engine.begin() as conn:
        uow = UnitOfWork(conn)
        yield uow
        await uow.flush()
