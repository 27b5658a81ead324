"""Placing an order, one function per pattern. The outbox pattern writes the order and its
order.created event in one local transaction; the relay publishes the event afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.common.envelope import Envelope
from services.messaging.inbox import unit_of_work
from services.order.domain import OrderStatus, PaymentAnswer, StockAnswer
from services.runtime.state import Runtime


@dataclass(frozen=True)
class Item:
    sku: str
    qty: int
    unit_price_cents: int


@dataclass(frozen=True)
class PlaceOrder:
    order_id: uuid.UUID
    customer_id: str
    pattern: str
    items: list[Item]
    idempotency_key: str | None
    request_hash: str

    @property
    def total_cents(self) -> int:
        return sum(i.qty * i.unit_price_cents for i in self.items)

    def view(self, created_at: datetime) -> dict[str, Any]:
        """The order as GET /orders/{id} shows it right after it was placed."""
        return {"id": self.order_id, "customer_id": self.customer_id, "pattern": self.pattern,
                "status": OrderStatus.PENDING, "reason": None, "total_cents": self.total_cents,
                "stock_status": StockAnswer.PENDING, "payment_status": PaymentAnswer.PENDING,
                "created_at": created_at, "decided_at": None,
                "items": [vars(i) for i in sorted(self.items, key=lambda i: i.sku)]}


async def place_with_outbox(rt: Runtime, cmd: PlaceOrder) -> datetime:
    async with unit_of_work(rt.engine) as uow:
        created_at = await uow.conn.scalar(sa.text(
            "INSERT INTO orders (id, customer_id, pattern, status, total_cents, stock_status, payment_status, "
            "idempotency_key, request_hash) VALUES (:id, :c, :p, 'PENDING', :t, 'PENDING', 'PENDING', :k, :h) "
            "RETURNING created_at"),
            {"id": cmd.order_id, "c": cmd.customer_id, "p": cmd.pattern, "t": cmd.total_cents,
             "k": cmd.idempotency_key, "h": cmd.request_hash})
        await uow.conn.execute(sa.text(
            "INSERT INTO order_items (order_id, sku, qty, unit_price_cents) VALUES (:o, :s, :q, :p)"),
            [{"o": cmd.order_id, "s": i.sku, "q": i.qty, "p": i.unit_price_cents} for i in cmd.items])
        await uow.emit(Envelope(type="order.created", order_id=cmd.order_id, payload={
            "customer_id": cmd.customer_id, "total_cents": cmd.total_cents, "pattern": cmd.pattern,
            "items": [vars(i) for i in cmd.items]}))
    return created_at


PATTERNS: dict[str, Callable[[Runtime, PlaceOrder], Awaitable[datetime]]] = {
    "outbox": place_with_outbox,
}


async def place_order(rt: Runtime, cmd: PlaceOrder) -> datetime:
    """Place the order with its pattern; return when it was accepted."""
    return await PATTERNS[cmd.pattern](rt, cmd)
