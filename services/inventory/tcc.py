"""Inventory as a TCC participant: Try reserves every item or none, Confirm sells them, Cancel releases them.
The reservation rows are the outbox flow's (keyed by order id), so the stock invariant covers TCC too."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from services.common.db import Queries
from services.common.identifiers import Identifier
from services.runtime.tcc import Branch, Effects, Tried, tcc_router


class TccItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Identifier
    qty: StrictInt = Field(ge=1, le=10_000)


class InventoryTry(Branch):
    order_id: uuid.UUID
    items: list[TccItem] = Field(min_length=1, max_length=50)


async def reserve(db: Queries, body: InventoryTry) -> Tried:
    for item in sorted(body.items, key=lambda i: i.sku):  # one lock order for every order: no deadlock
        # one statement: the stock taken (if there is enough) and its reservation row written together
        took = await db.fetchval(
            "WITH took AS (UPDATE products SET available = available - $3, reserved = reserved + $3 "
            "WHERE sku = $2 AND available >= $3 RETURNING sku) "
            "INSERT INTO reservations (order_id, sku, qty, status) SELECT $1, sku, $3, 'RESERVED' FROM took "
            "RETURNING true", body.order_id, item.sku, item.qty)
        if took is None:
            return Tried("REJECTED", False, {"why": f"not enough stock of {item.sku}"})
    return Tried("RESERVED", True, {"order_id": str(body.order_id)})


async def _settle(db: Queries, order_id: str, to: str, moves: str) -> None:
    order = uuid.UUID(order_id)
    # the products first, in sku order (the one lock order of every order and batch), then in one statement the
    # reservation settled and its stock moved
    await db.execute("SELECT 1 FROM products WHERE sku IN (SELECT sku FROM reservations WHERE order_id = $1) "
                     "ORDER BY sku FOR UPDATE", order)
    await db.execute(
        "WITH settled AS (UPDATE reservations SET status = $2, updated_at = now() "
        "WHERE order_id = $1 AND status = 'RESERVED' RETURNING sku, qty) "
        f"UPDATE products SET {moves} FROM settled WHERE products.sku = settled.sku", order, to)


async def sell(db: Queries, detail: dict) -> None:
    await _settle(db, detail["order_id"], "SOLD", "reserved = reserved - settled.qty, sold = sold + settled.qty")


async def release(db: Queries, detail: dict) -> None:
    await _settle(db, detail["order_id"], "RELEASED",
                  "reserved = reserved - settled.qty, available = available + settled.qty")


async def can_reserve(db: Queries, body: InventoryTry) -> str | None:
    """3PC can-commit: whether every item is in stock now, read without a lock."""
    for item in body.items:
        if not await db.fetchval("SELECT available >= $2 FROM products WHERE sku = $1", item.sku, item.qty):
            return f"not enough stock of {item.sku}"
    return None


EFFECTS = Effects(reserve, sell, release)
router = tcc_router("inventory", InventoryTry, EFFECTS)
