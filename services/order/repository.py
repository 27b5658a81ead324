"""Where the order service keeps orders: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.order.domain import Order, OrderStatus, PaymentAnswer, StockAnswer


class Orders(Protocol):
    async def lock(self, order_id: uuid.UUID) -> Order | None: ...

    async def save(self, order_id: uuid.UUID, order: Order) -> None: ...


class SqlOrders:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock(self, order_id: uuid.UUID) -> Order | None:
        row = (await self.conn.execute(sa.text(
            "SELECT status, stock_status, payment_status, reason FROM orders WHERE id = :o FOR UPDATE"),
            {"o": order_id})).first()
        if row is None:
            return None
        return Order(OrderStatus(row.status), StockAnswer(row.stock_status), PaymentAnswer(row.payment_status),
                     row.reason)

    async def save(self, order_id: uuid.UUID, order: Order) -> None:
        await self.conn.execute(sa.text(
            "UPDATE orders SET status = :s, stock_status = :st, payment_status = :p, reason = :r, "
            "decided_at = CASE WHEN :s <> 'PENDING' THEN coalesce(decided_at, now()) END WHERE id = :o"),
            {"s": order.status, "st": order.stock, "p": order.payment, "r": order.reason, "o": order_id})
