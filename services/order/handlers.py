"""Order use cases: record each participant's answer and announce the decision (choreography)."""

from __future__ import annotations

from collections.abc import Sequence

from services.cache.keys import order_key
from services.common.envelope import Envelope
from services.messaging.inbox import UnitOfWork
from services.order.domain import ANSWERS, decide
from services.order.repository import Orders, SqlOrders
from services.runtime.events import Outbox


async def record_answer(orders: Orders, outbox: Outbox, event: Envelope) -> None:
    """Record a participant's answer; once both answered, decide the order and announce it."""
    if event.order_id is None:
        raise LookupError(f"{event.type} {event.message_id} names no order")
    order = await orders.lock(event.order_id)
    if order is None:
        raise LookupError(f"{event.type} for unknown order {event.order_id}")
    decision = decide(order, event.type, event.payload.get("reason"))
    if decision.order != order:
        await orders.save(event.order_id, decision.order)
        outbox.stale_keys.add(order_key(event.order_id))
    for emit in decision.emit:
        await outbox.emit(event.caused(emit.type, emit.payload))


async def _record(uow: UnitOfWork, event: Envelope) -> None:
    await record_answer(uow.repository(SqlOrders), uow, event)


async def lock_orders(uow: UnitOfWork, events: Sequence[Envelope]) -> None:
    """Lock every order a batch of answers names, in one statement."""
    await uow.repository(SqlOrders).lock_all(e.order_id for e in events if e.order_id is not None)


HANDLERS = {event_type: _record for event_type in ANSWERS}
