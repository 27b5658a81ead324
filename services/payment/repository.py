"""Where payment keeps balances and payments: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.payment.domain import Payment, PaymentStatus


class Money(Protocol):
    async def lock_balance(self, customer_id: str) -> int | None: ...

    async def payment(self, order_id: uuid.UUID) -> Payment | None: ...

    async def record(self, order_id: uuid.UUID, payment: Payment, reason: str | None) -> None: ...

    async def add_to_balance(self, customer_id: str, cents: int) -> None: ...


class SqlMoney:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock_balance(self, customer_id: str) -> int | None:
        return (await self.conn.execute(sa.text(
            "SELECT balance_cents FROM customers WHERE id = :c FOR UPDATE"), {"c": customer_id})).scalar()

    async def payment(self, order_id: uuid.UUID) -> Payment | None:
        row = (await self.conn.execute(sa.text(
            "SELECT status, customer_id, amount_cents FROM payments WHERE order_id = :o FOR UPDATE"),
            {"o": order_id})).first()
        return Payment(PaymentStatus(row.status), row.customer_id, row.amount_cents) if row else None

    async def record(self, order_id: uuid.UUID, payment: Payment, reason: str | None) -> None:
        await self.conn.execute(sa.text(
            "INSERT INTO payments (order_id, customer_id, amount_cents, status, reason) "
            "VALUES (:o, :c, :a, :s, :r) ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, "
            "refunded_at = CASE WHEN excluded.status = 'REFUNDED' THEN now() END"),
            {"o": order_id, "c": payment.customer_id, "a": payment.amount_cents, "s": payment.status, "r": reason})

    async def add_to_balance(self, customer_id: str, cents: int) -> None:
        await self.conn.execute(sa.text(
            "UPDATE customers SET balance_cents = balance_cents + :a WHERE id = :c"), {"a": cents, "c": customer_id})
