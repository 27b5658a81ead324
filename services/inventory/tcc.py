"""Inventory as a TCC participant: Try reserves every item or none, Confirm sells them, Cancel releases them.
The reservation rows are the outbox flow's (keyed by order id), so the stock invariant covers TCC too."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.identifiers import Identifier
from services.runtime.tcc import Branch, Effects, Tried, tcc_router


class TccItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Identifier
    qty: int = Field(ge=1, le=10_000)


class InventoryTry(Branch):
    order_id: uuid.UUID
    items: list[TccItem] = Field(min_length=1, max_length=50)


async def reserve(conn: AsyncConnection, body: InventoryTry) -> Tried:
    for item in sorted(body.items, key=lambda i: i.sku):  # one lock order for every order: no deadlock
        took = await conn.scalar(sa.text(
            "UPDATE products SET available = available - :q, reserved = reserved + :q "
            "WHERE sku = :s AND available >= :q RETURNING 1"), {"s": item.sku, "q": item.qty})
        if took is None:
            return Tried("REJECTED", False, {"why": f"not enough stock of {item.sku}"})
        await conn.execute(sa.text(
            "INSERT INTO reservations (order_id, sku, qty, status) VALUES (:o, :s, :q, 'RESERVED')"),
            {"o": body.order_id, "s": item.sku, "q": item.qty})
    return Tried("RESERVED", True, {"order_id": str(body.order_id)})


async def _settle(conn: AsyncConnection, order_id: str, to: str, moves: str) -> None:
    rows = (await conn.execute(sa.text(
        "UPDATE reservations SET status = :to, updated_at = now() WHERE order_id = :o AND status = 'RESERVED' "
        "RETURNING sku, qty"), {"o": uuid.UUID(order_id), "to": to})).all()
    for r in rows:
        await conn.execute(sa.text(f"UPDATE products SET {moves} WHERE sku = :s"), {"s": r.sku, "q": r.qty})


async def sell(conn: AsyncConnection, detail: dict) -> None:
    await _settle(conn, detail["order_id"], "SOLD", "reserved = reserved - :q, sold = sold + :q")


async def release(conn: AsyncConnection, detail: dict) -> None:
    await _settle(conn, detail["order_id"], "RELEASED", "reserved = reserved - :q, available = available + :q")


async def can_reserve(conn: AsyncConnection, body: InventoryTry) -> str | None:
    """3PC can-commit: whether every item is in stock now, read without a lock."""
    for item in body.items:
        if not await conn.scalar(sa.text("SELECT available >= :q FROM products WHERE sku = :s"),
                                 {"s": item.sku, "q": item.qty}):
            return f"not enough stock of {item.sku}"
    return None


EFFECTS = Effects(reserve, sell, release)
router = tcc_router("inventory", InventoryTry, EFFECTS)
