"""Payment use cases: charge on order.created, refund on order.cancelled."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.envelope import Envelope
from services.messaging.inbox import UnitOfWork
from services.payment.domain import Payment, decide
from services.payment.repository import Money, SqlMoney
from services.runtime.events import Outbox


async def apply_payment_event(money: Money, outbox: Outbox, event: Envelope) -> None:
    if event.order_id is None:
        raise LookupError(f"{event.type} {event.message_id} names no order")
    payment = await money.payment(event.order_id)
    if event.type == "order.created":
        customer, amount = str(event.payload["customer_id"]), int(event.payload["total_cents"])
        decision = decide(payment, event.type, amount, await money.lock_balance(customer))
    else:
        decision = decide(payment, event.type)
        customer, amount = (payment.customer_id, payment.amount_cents) if payment else ("", 0)
    if decision.record is not None:
        await money.record(event.order_id, Payment(decision.record, customer, amount), decision.reason)
    if decision.balance_change:
        await money.add_to_balance(customer, decision.balance_change)
    for emit in decision.emit:
        await outbox.emit(event.caused(emit.type, emit.payload))


async def _apply(uow: UnitOfWork, event: Envelope) -> None:
    await apply_payment_event(uow.repository(SqlMoney), uow, event)


async def lock_money(uow: UnitOfWork, events: Sequence[Envelope]) -> None:
    """Load and lock, in one statement, every payment and balance a batch will read or change (balances in id
    order)."""
    customers = {str(e.payload["customer_id"]) for e in events if e.type == "order.created"}
    await uow.repository(SqlMoney).load(customers, {e.order_id for e in events if e.order_id is not None})


HANDLERS = {"order.created": _apply, "order.cancelled": _apply}
