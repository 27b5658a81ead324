"""Applying one consumed event: inbox claim, effect and emitted events in one transaction, then the cached
views it changed are invalidated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from services.common.envelope import Envelope
from services.messaging.inbox import UnitOfWork, unit_of_work
from services.runtime.state import Runtime

EventHandler = Callable[[UnitOfWork, Envelope], Awaitable[None]]


class Outbox(Protocol):
    """What a use case needs of its unit of work: emit events, and name the cached views it changed."""

    stale_keys: set[str]

    async def emit(self, envelope: Envelope) -> None: ...


async def apply_event(rt: Runtime, handlers: dict[str, EventHandler], envelope: Envelope) -> None:
    """Apply `envelope` exactly once; an event this service has no handler for is acknowledged unread."""
    handler = handlers.get(envelope.type)
    if handler is None:
        return
    async with unit_of_work(rt.engine) as uow:
        if not await uow.claim(envelope):
            rt.stats["duplicates_skipped"] += 1
            return
        await handler(uow, envelope)
        await rt.faults.hit(f"{rt.service}.before_commit")
    rt.stats["events_applied"] += 1
    await invalidate_after_commit(rt, uow)


async def invalidate_after_commit(rt: Runtime, uow: UnitOfWork) -> None:
    """Delete the cached views the committed transaction changed (after commit: a reader cannot reload the
    old value between the delete and the commit)."""
    for key in uow.stale_keys:
        await rt.cache.invalidate(key)
