"""Payment as a TCC participant: Try freezes the amount (balance to frozen), Confirm captures it (a CAPTURED
payment), Cancel gives it back. The money invariant counts frozen money: balance + frozen + captured -
refunded = initial."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.identifiers import Identifier
from services.runtime.tcc import Branch, Effects, Tried, tcc_router


class PaymentTry(Branch):
    order_id: uuid.UUID
    customer_id: Identifier
    amount_cents: int = Field(gt=0, le=10**12)


async def freeze(conn: AsyncConnection, body: PaymentTry) -> Tried:
    took = await conn.scalar(sa.text(
        "UPDATE customers SET balance_cents = balance_cents - :a, frozen_cents = frozen_cents + :a "
        "WHERE id = :c AND balance_cents >= :a RETURNING 1"), {"c": body.customer_id, "a": body.amount_cents})
    if took is None:
        return Tried("REFUSED", False, {"why": f"customer {body.customer_id} is unknown or cannot pay "
                                               f"{body.amount_cents} cents"})
    return Tried("FROZEN", True, {"order_id": str(body.order_id), "customer_id": body.customer_id,
                                  "amount_cents": body.amount_cents})


async def capture(conn: AsyncConnection, detail: dict) -> None:
    await conn.execute(sa.text("UPDATE customers SET frozen_cents = frozen_cents - :a WHERE id = :c"),
                       {"a": detail["amount_cents"], "c": detail["customer_id"]})
    await conn.execute(sa.text(
        "INSERT INTO payments (order_id, customer_id, amount_cents, status) VALUES (:o, :c, :a, 'CAPTURED')"),
        {"o": uuid.UUID(detail["order_id"]), "c": detail["customer_id"], "a": detail["amount_cents"]})


async def unfreeze(conn: AsyncConnection, detail: dict) -> None:
    await conn.execute(sa.text(
        "UPDATE customers SET frozen_cents = frozen_cents - :a, balance_cents = balance_cents + :a WHERE id = :c"),
        {"a": detail["amount_cents"], "c": detail["customer_id"]})


async def can_pay(conn: AsyncConnection, body: PaymentTry) -> str | None:
    """3PC can-commit: whether the customer can pay now, read without a lock."""
    if not await conn.scalar(sa.text("SELECT balance_cents >= :a FROM customers WHERE id = :c"),
                             {"c": body.customer_id, "a": body.amount_cents}):
        return f"customer {body.customer_id} is unknown or cannot pay {body.amount_cents} cents"
    return None


EFFECTS = Effects(freeze, capture, unfreeze)
router = tcc_router("payment", PaymentTry, EFFECTS)
