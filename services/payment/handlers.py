"""Payment use cases: charge on order.created, refund on order.cancelled."""

from __future__ import annotations

import sqlalchemy as sa

from services.common.envelope import Envelope
from services.common.outbox import UnitOfWork
from services.payment.domain import CAPTURED, FAILED, REFUNDED, charge_refusal


async def charge(uow: UnitOfWork, event: Envelope) -> None:
    customer, amount = event.payload["customer_id"], int(event.payload["total_cents"])
    balance = (await uow.conn.execute(sa.text(
        "SELECT balance_cents FROM customers WHERE id = :c FOR UPDATE"), {"c": customer})).scalar()
    refusal = charge_refusal(balance, amount)
    await uow.conn.execute(sa.text(
        "INSERT INTO payments (order_id, customer_id, amount_cents, status, reason) VALUES (:o, :c, :a, :s, :r)"),
        {"o": event.order_id, "c": customer, "a": amount, "s": FAILED if refusal else CAPTURED, "r": refusal})
    if refusal:
        await uow.emit(event.caused("payment.failed", {"reason": refusal}))
        return
    await uow.conn.execute(sa.text(
        "UPDATE customers SET balance_cents = balance_cents - :a WHERE id = :c"), {"a": amount, "c": customer})
    await uow.emit(event.caused("payment.succeeded", {"amount_cents": amount}))


async def refund(uow: UnitOfWork, event: Envelope) -> None:
    row = (await uow.conn.execute(sa.text(
        "UPDATE payments SET status = :to, refunded_at = now() WHERE order_id = :o AND status = :from "
        "RETURNING customer_id, amount_cents"), {"to": REFUNDED, "o": event.order_id, "from": CAPTURED})).first()
    if row is None:
        return
    await uow.conn.execute(sa.text(
        "UPDATE customers SET balance_cents = balance_cents + :a WHERE id = :c"),
        {"a": row.amount_cents, "c": row.customer_id})
    await uow.emit(event.caused("payment.refunded", {"amount_cents": row.amount_cents}))


HANDLERS = {
    "order.created": charge,
    "order.cancelled": refund,
}
