"""Placing an order, one function per pattern. The outbox pattern writes the order and its
order.created event in one local transaction; the relay publishes the event afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa

from services.common.envelope import Envelope
from services.common.outbox import unit_of_work
from services.common.service_app import Runtime
from services.order.domain import PENDING


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


async def place_with_outbox(rt: Runtime, cmd: PlaceOrder) -> None:
    async with unit_of_work(rt.engine) as uow:
        await uow.conn.execute(sa.text(
            "INSERT INTO orders (id, customer_id, pattern, status, total_cents, stock_status, payment_status, "
            "idempotency_key, request_hash) VALUES (:id, :c, :p, :s, :t, :s, :s, :k, :h)"),
            {"id": cmd.order_id, "c": cmd.customer_id, "p": cmd.pattern, "s": PENDING, "t": cmd.total_cents,
             "k": cmd.idempotency_key, "h": cmd.request_hash})
        await uow.conn.execute(sa.text(
            "INSERT INTO order_items (order_id, sku, qty, unit_price_cents) VALUES (:o, :s, :q, :p)"),
            [{"o": cmd.order_id, "s": i.sku, "q": i.qty, "p": i.unit_price_cents} for i in cmd.items])
        await uow.emit(Envelope(type="order.created", order_id=cmd.order_id, payload={
            "customer_id": cmd.customer_id, "total_cents": cmd.total_cents, "pattern": cmd.pattern,
            "items": [vars(i) for i in cmd.items]}))


PATTERNS: dict[str, Callable[[Runtime, PlaceOrder], Awaitable[None]]] = {
    "outbox": place_with_outbox,
}


async def place_order(rt: Runtime, cmd: PlaceOrder) -> None:
    await PATTERNS[cmd.pattern](rt, cmd)
