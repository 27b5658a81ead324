"""The inbox table and the unit of work: a consumed message is claimed in the inbox, applied, and the events
it causes are written to the outbox, all in one local transaction, so a duplicate is applied once.

A unit of work runs on asyncpg directly (`services.common.db.Sql`): it is the pipeline's hot path. It writes
its outbox rows together just before it commits, however many it emitted."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import Sql, transaction
from services.common.envelope import Envelope
from services.messaging.outbox import METADATA

INBOX = sa.Table(
    "inbox", METADATA,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


R = TypeVar("R")

# One statement claims a whole batch: the ids that come back are the messages not seen before
_CLAIM = ("INSERT INTO inbox (message_id, type) SELECT * FROM unnest($1::uuid[], $2::text[]) "
          "ON CONFLICT DO NOTHING RETURNING message_id")
# ... and one writes every outbox row the batch emitted (the insert trigger's NOTIFY fires once)
_EMIT = ("INSERT INTO outbox (id, order_id, routing_key, envelope) SELECT id, order_id, routing_key, "
         "CAST(envelope AS jsonb) FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) "
         "AS e(id, order_id, routing_key, envelope)")


@dataclass
class UnitOfWork:
    """One local transaction: the business effect, the inbox claims and the outbox rows commit together."""

    db: Sql
    stale_keys: set[str] = field(default_factory=set)  # cached views to invalidate once committed
    emitted: list[Envelope] = field(default_factory=list)  # outbox rows, written before the commit
    repositories: dict[type, Any] = field(default_factory=dict)

    def repository(self, kind: Callable[[Sql], R]) -> R:
        """The unit of work's one repository of `kind`: what it loaded and changed is shared by every message
        of a batch, and what it holds back is written by `flush`."""
        if kind not in self.repositories:
            self.repositories[kind] = kind(self.db)
        return self.repositories[kind]

    async def claim(self, envelope: Envelope) -> bool:
        """Record `envelope` in the inbox; False when it was already processed (a duplicate)."""
        return bool(await self.claim_all([envelope]))

    async def claim_all(self, envelopes: Sequence[Envelope]) -> set[uuid.UUID]:
        """Record `envelopes` in the inbox; return the ids of those not processed before (each once)."""
        rows = await self.db.fetch(_CLAIM, [e.message_id for e in envelopes], [e.type for e in envelopes])
        return {r[0] for r in rows}

    async def emit(self, envelope: Envelope) -> None:
        """Add `envelope` to the outbox; the relay publishes it after this transaction commits."""
        self.emitted.append(envelope)

    async def flush(self) -> None:
        """Write what the repositories hold back, then the emitted outbox rows, in one statement."""
        for repository in self.repositories.values():
            if hasattr(repository, "flush"):
                await repository.flush()
        if self.emitted:
            rows, self.emitted = self.emitted, []
            await self.db.execute(_EMIT, [e.message_id for e in rows], [e.order_id for e in rows],
                                  [e.type for e in rows], [e.to_bytes().decode() for e in rows])


@contextlib.asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    async with transaction(engine) as db:
        uow = UnitOfWork(db)
        yield uow
        await uow.flush()
