"""Inventory use cases: reserve on order.created, deduct on order.paid, release on order.cancelled."""

from __future__ import annotations

import sqlalchemy as sa

from services.cache.keys import stock_key
from services.common.envelope import Envelope
from services.common.outbox import UnitOfWork
from services.inventory.domain import RELEASED, RESERVED, SOLD, Line, shortages


async def reserve_stock(uow: UnitOfWork, event: Envelope) -> None:
    lines = [Line(i["sku"], int(i["qty"])) for i in event.payload["items"]]
    skus = sorted({line.sku for line in lines})  # lock rows in one order: no deadlock between orders
    rows = await uow.conn.execute(sa.text(
        "SELECT sku, available FROM products WHERE sku = ANY(:skus) ORDER BY sku FOR UPDATE"), {"skus": skus})
    missing = shortages({r.sku: r.available for r in rows}, lines)
    if missing:
        await uow.emit(event.caused("stock.rejected", {"reason": "insufficient stock: " + "; ".join(missing)}))
        return
    for line in lines:
        await uow.conn.execute(sa.text(
            "UPDATE products SET available = available - :q, reserved = reserved + :q WHERE sku = :s"),
            {"q": line.qty, "s": line.sku})
        uow.stale_keys.add(stock_key(line.sku))
    await uow.conn.execute(sa.text(
        "INSERT INTO reservations (order_id, sku, qty, status) VALUES (:o, :s, :q, :st)"),
        [{"o": event.order_id, "s": line.sku, "q": line.qty, "st": RESERVED} for line in lines])
    await uow.emit(event.caused("stock.reserved", {"items": [vars(line) for line in lines]}))


async def _settle(uow: UnitOfWork, event: Envelope, to: str) -> list[dict]:
    """Move the order's RESERVED reservations to SOLD or RELEASED, adjusting the product counters."""
    rows = (await uow.conn.execute(sa.text(
        "UPDATE reservations SET status = :to, updated_at = now() "
        "WHERE order_id = :o AND status = :from RETURNING sku, qty"),
        {"to": to, "o": event.order_id, "from": RESERVED})).all()
    moved = "sold" if to == SOLD else "available"
    for r in sorted(rows, key=lambda r: r.sku):
        await uow.conn.execute(sa.text(
            f"UPDATE products SET reserved = reserved - :q, {moved} = {moved} + :q WHERE sku = :s"),
            {"q": r.qty, "s": r.sku})
        uow.stale_keys.add(stock_key(r.sku))
    return [{"sku": r.sku, "qty": r.qty} for r in rows]


async def deduct_stock(uow: UnitOfWork, event: Envelope) -> None:
    await _settle(uow, event, SOLD)


async def release_stock(uow: UnitOfWork, event: Envelope) -> None:
    released = await _settle(uow, event, RELEASED)
    if released:
        await uow.emit(event.caused("stock.released", {"items": released}))


HANDLERS = {
    "order.created": reserve_stock,
    "order.paid": deduct_stock,
    "order.cancelled": release_stock,
}
