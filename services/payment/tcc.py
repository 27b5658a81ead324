"""Payment as a TCC participant: Try freezes the amount (balance to frozen), Confirm captures it (a CAPTURED
payment), Cancel gives it back. The money invariant counts frozen money: balance + frozen + captured -
refunded = initial."""

from __future__ import annotations

import uuid

from pydantic import Field, StrictInt

from services.common.db import Queries
from services.common.identifiers import Identifier
from services.runtime.tcc import Branch, Effects, Tried, tcc_router


class PaymentTry(Branch):
    order_id: uuid.UUID
    customer_id: Identifier
    amount_cents: StrictInt = Field(gt=0, le=10**12)


async def freeze(db: Queries, body: PaymentTry) -> Tried:
    took = await db.fetchval(
        "UPDATE customers SET balance_cents = balance_cents - $2, frozen_cents = frozen_cents + $2 "
        "WHERE id = $1 AND balance_cents >= $2 RETURNING true", body.customer_id, body.amount_cents)
    if took is None:
        return Tried("REFUSED", False, {"why": f"customer {body.customer_id} is unknown or cannot pay "
                                               f"{body.amount_cents} cents"})
    return Tried("FROZEN", True, {"order_id": str(body.order_id), "customer_id": body.customer_id,
                                  "amount_cents": body.amount_cents})


async def capture(db: Queries, detail: dict) -> None:
    # one statement: the frozen amount is taken and the payment recorded together
    await db.execute(
        "WITH taken AS (UPDATE customers SET frozen_cents = frozen_cents - $3 WHERE id = $2) "
        "INSERT INTO payments (order_id, customer_id, amount_cents, status) VALUES ($1, $2, $3, 'CAPTURED')",
        uuid.UUID(detail["order_id"]), detail["customer_id"], detail["amount_cents"])


async def unfreeze(db: Queries, detail: dict) -> None:
    await db.execute(
        "UPDATE customers SET frozen_cents = frozen_cents - $2, balance_cents = balance_cents + $2 WHERE id = $1",
        detail["customer_id"], detail["amount_cents"])


async def can_pay(db: Queries, body: PaymentTry) -> str | None:
    """3PC can-commit: whether the customer can pay now, read without a lock."""
    if not await db.fetchval("SELECT balance_cents >= $2 FROM customers WHERE id = $1", body.customer_id,
                             body.amount_cents):
        return f"customer {body.customer_id} is unknown or cannot pay {body.amount_cents} cents"
    return None


EFFECTS = Effects(freeze, capture, unfreeze)
router = tcc_router("payment", PaymentTry, EFFECTS)
