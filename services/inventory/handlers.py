"""Inventory use cases: reserve on order.created, sell on order.paid, release on order.cancelled."""

from __future__ import annotations

from collections.abc import Sequence

from services.cache.keys import stock_key
from services.common.envelope import Envelope
from services.inventory.domain import Line, decide
from services.inventory.repository import SqlStock, Stock
from services.messaging.inbox import UnitOfWork
from services.runtime.events import Outbox


async def apply_stock_event(stock: Stock, outbox: Outbox, event: Envelope) -> None:
    if event.order_id is None:
        raise LookupError(f"{event.type} {event.message_id} names no order")
    wanted: tuple[Line, ...] = ()
    available: dict[str, int] = {}
    if event.type == "order.created":
        wanted = tuple(Line(str(i["sku"]), int(i["qty"])) for i in event.payload["items"])
        available = await stock.lock_available([line.sku for line in wanted])
    held = await stock.held(event.order_id)
    decision = decide(held, event.type, wanted, available)
    if decision.reserve:
        await stock.reserve(event.order_id, decision.reserve)
    if decision.settle is not None:
        await stock.settle(event.order_id, held.lines, decision.settle)
    changed = decision.reserve + (held.lines if decision.settle else ())
    outbox.stale_keys.update(stock_key(line.sku) for line in changed)
    for emit in decision.emit:
        await outbox.emit(event.caused(emit.type, emit.payload))


async def _apply(uow: UnitOfWork, event: Envelope) -> None:
    await apply_stock_event(uow.repository(SqlStock), uow, event)


async def lock_stock(uow: UnitOfWork, events: Sequence[Envelope]) -> None:
    """Load and lock, in one statement, every reservation and product a batch will read or change (products in
    sku order)."""
    skus = {str(i["sku"]) for e in events if e.type == "order.created" for i in e.payload.get("items", [])}
    await uow.repository(SqlStock).load(skus, {e.order_id for e in events if e.order_id is not None})


HANDLERS = {"order.created": _apply, "order.paid": _apply, "order.cancelled": _apply}
