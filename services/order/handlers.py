"""Order use cases: record each participant's answer and decide the order (choreography)."""

from __future__ import annotations

import sqlalchemy as sa

from services.cache.keys import order_key
from services.common.envelope import Envelope
from services.common.outbox import UnitOfWork
from services.common.service_app import EventHandler
from services.order.domain import (
    CHARGED,
    FAILED,
    PAID,
    PENDING,
    REFUNDED,
    REJECTED,
    RELEASED,
    RESERVED,
    decide,
)


async def _record(uow: UnitOfWork, event: Envelope, column: str, value: str) -> None:
    """Record one participant's answer (and its reason); once both answered, decide and announce."""
    row = (await uow.conn.execute(sa.text(
        f"UPDATE orders SET {column} = :v, reason = concat_ws('; ', reason, CAST(:r AS text)) WHERE id = :o "
        "RETURNING status, stock_status, payment_status, reason"),
        {"v": value, "r": event.payload.get("reason"), "o": event.order_id})).first()
    if row is None:
        raise LookupError(f"event {event.type} for unknown order {event.order_id}")
    uow.stale_keys.add(order_key(event.order_id))
    status = decide(row.stock_status, row.payment_status) if row.status == PENDING else None
    if status is None:
        return
    await uow.conn.execute(sa.text("UPDATE orders SET status = :s, decided_at = now() WHERE id = :o"),
                           {"s": status, "o": event.order_id})
    if status == PAID:
        await uow.emit(event.caused("order.paid", {}))
    else:
        await uow.emit(event.caused("order.cancelled", {"reason": row.reason}))


def _recorder(column: str, value: str) -> EventHandler:
    async def handle(uow: UnitOfWork, event: Envelope) -> None:
        await _record(uow, event, column, value)
    handle.__name__ = f"record_{column}_{value.lower()}"
    return handle


HANDLERS = {
    "stock.reserved": _recorder("stock_status", RESERVED),
    "stock.rejected": _recorder("stock_status", REJECTED),
    "stock.released": _recorder("stock_status", RELEASED),
    "payment.succeeded": _recorder("payment_status", CHARGED),
    "payment.failed": _recorder("payment_status", FAILED),
    "payment.refunded": _recorder("payment_status", REFUNDED),
}
