"""Applying consumed events: a batch's inbox claims, effects and emitted events in one transaction, then the
cached views they changed are invalidated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from services.common.envelope import Envelope
from services.common.tracing import handling
from services.messaging.inbox import UnitOfWork, unit_of_work
from services.runtime.state import Runtime

EventHandler = Callable[[UnitOfWork, Envelope], Awaitable[None]]
# Called once per batch, before its handlers, with the batch's new events: loads (and locks) in one statement
# what the handlers will each ask for
Prepare = Callable[[UnitOfWork, Sequence[Envelope]], Awaitable[None]]


class Outbox(Protocol):
    """What a use case needs of its unit of work: emit events, and name the cached views it changed."""

    stale_keys: set[str]

    async def emit(self, envelope: Envelope) -> None: ...


async def apply_events(rt: Runtime, handlers: dict[str, EventHandler], envelopes: Sequence[Envelope],
                       prepare: Prepare | None = None) -> None:
    """Apply each of `envelopes` exactly once, all in one transaction, in their order; an event this service
    has no handler for is acknowledged unread. If any fails, none is applied."""
    handled = [e for e in envelopes if e.type in handlers]
    if not handled:
        return
    applied = 0
    async with unit_of_work(rt.engine) as uow:
        fresh = await uow.claim_all(handled)
        if prepare is not None and fresh:
            await prepare(uow, [e for e in handled if e.message_id in fresh])
        for envelope in handled:
            if envelope.message_id not in fresh:
                rt.stats["duplicates_skipped"] += 1
                continue
            fresh.discard(envelope.message_id)  # a second copy in the same batch is a duplicate too
            with handling(envelope.message_id, envelope.order_id):
                await handlers[envelope.type](uow, envelope)
            await rt.faults.hit(f"{rt.service}.before_commit")
            applied += 1
    rt.stats["events_applied"] += applied
    await invalidate_after_commit(rt, uow)


async def invalidate_after_commit(rt: Runtime, uow: UnitOfWork) -> None:
    """Delete the cached views the committed transaction changed (after commit: a reader cannot reload the
    old value between the delete and the commit)."""
    if uow.stale_keys:
        await rt.cache.invalidate_many(uow.stale_keys)
