"""Placing an order, one function per pattern. The outbox pattern writes the order and its
order.created event in one local transaction; the relay publishes the event afterwards. The halfmsg
pattern sends the event to the half-message broker first, runs the local transaction, then commits the
message (see services/order/halfmsg.py). The tcc pattern records the order PENDING and begins its global
transaction on the coordinator, which reports the outcome (see services/order/coordinated.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.db import pooled, transaction
from services.common.envelope import Envelope
from services.order import coordinated, halfmsg
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


# The order and its items in one statement, sent by asyncpg itself (services.common.db.Sql); the last part says
# what else the same statement writes
_ORDER = (
    "WITH placed AS (INSERT INTO orders (id, customer_id, pattern, status, total_cents, stock_status, "
    "payment_status, idempotency_key, request_hash) VALUES ($1, $2, $3, 'PENDING', $4, 'PENDING', 'PENDING', "
    "$5, $6) RETURNING id, created_at), "
    "items AS (INSERT INTO order_items (order_id, sku, qty, unit_price_cents) SELECT placed.id, item.* FROM placed, "
    "unnest($7::text[], $8::integer[], $9::bigint[]) AS item) ")
_INSERT_ORDER = _ORDER + "SELECT created_at FROM placed"
# ... and its order.created outbox row: atomic without BEGIN and COMMIT. The outbox row's created_at is the
# order's (now() is the statement's transaction time).
_PLACE_WITH_OUTBOX = (
    _ORDER + "INSERT INTO outbox (id, order_id, routing_key, envelope) SELECT $10, id, $11, CAST($12 AS jsonb) "
    "FROM placed RETURNING created_at")


def _order_params(cmd: PlaceOrder) -> tuple[Any, ...]:
    return (cmd.order_id, cmd.customer_id, cmd.pattern, cmd.total_cents, cmd.idempotency_key, cmd.request_hash,
            [i.sku for i in cmd.items], [i.qty for i in cmd.items], [i.unit_price_cents for i in cmd.items])


def _created(cmd: PlaceOrder) -> Envelope:
    return Envelope(type="order.created", order_id=cmd.order_id, payload={
        "customer_id": cmd.customer_id, "total_cents": cmd.total_cents, "pattern": cmd.pattern,
        "items": [vars(i) for i in cmd.items]})


async def place_with_outbox(rt: Runtime, cmd: PlaceOrder) -> datetime:
    event = _created(cmd)
    async with pooled(rt.engine) as db:
        return await db.fetchval(_PLACE_WITH_OUTBOX, *_order_params(cmd), event.message_id, event.type,
                                 event.to_bytes().decode())


async def place_with_half_message(rt: Runtime, cmd: PlaceOrder) -> datetime:
    """Half message, local transaction, then commit (or rollback); the broker checks back otherwise."""
    message_id = await halfmsg.send_half(rt, _created(cmd).to_dict())
    await rt.faults.hit("order.after_half_sent")
    try:
        async with transaction(rt.engine) as db:
            await halfmsg.bar(db, cmd.order_id)
            created_at = await db.fetchval(_INSERT_ORDER, *_order_params(cmd))
    except BaseException:
        await halfmsg.decide(rt, message_id, "rollback")
        raise
    await rt.faults.hit("order.before_half_decision")
    await halfmsg.decide(rt, message_id, "commit")
    return created_at


async def place_with_coordinator(rt: Runtime, cmd: PlaceOrder) -> datetime:
    """The order, PENDING, then its global transaction on the coordinator (see services/order/coordinated.py)."""
    async with pooled(rt.engine) as db:  # one statement: atomic without BEGIN and COMMIT
        created_at = await db.fetchval(_INSERT_ORDER, *_order_params(cmd))
    try:
        await coordinated.begin(rt, coordinated.begin_body(
            rt.settings, cmd.order_id, cmd.pattern, cmd.customer_id, cmd.total_cents,
            [(i.sku, i.qty) for i in sorted(cmd.items, key=lambda i: i.sku)], created_at))
    except coordinated.NotBegun as exc:
        exc.created_at = created_at
        raise
    return created_at


PATTERNS: dict[str, Callable[[Runtime, PlaceOrder], Awaitable[datetime]]] = {
    "outbox": place_with_outbox,
    "halfmsg": place_with_half_message,
    **{pattern: place_with_coordinator for pattern in coordinated.COORDINATED},
}


async def place_order(rt: Runtime, cmd: PlaceOrder) -> datetime:
    """Place the order with its pattern; return when it was accepted."""
    return await PATTERNS[cmd.pattern](rt, cmd)
