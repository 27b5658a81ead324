"""Where the order service keeps orders: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from services.common.db import Sql
from services.order.domain import Order, OrderStatus, PaymentAnswer, StockAnswer


class Orders(Protocol):
    async def lock(self, order_id: uuid.UUID) -> Order | None: ...

    async def save(self, order_id: uuid.UUID, order: Order) -> None: ...


class SqlOrders:
    """Orders locked once per unit of work (a whole batch with `lock_all`) and written back together by
    `flush`: a batch of answers costs two statements, however many orders it touches. `save` writes nothing
    until `flush`, which the unit of work (`uow.repository(SqlOrders)`) calls before it commits."""

    def __init__(self, db: Sql) -> None:
        self.db = db
        self._locked: dict[uuid.UUID, Order | None] = {}
        self._changed: dict[uuid.UUID, Order] = {}

    async def lock_all(self, order_ids: Iterable[uuid.UUID]) -> None:
        wanted = sorted(set(order_ids) - self._locked.keys())
        if not wanted:
            return
        rows = await self.db.fetch(_LOCK, wanted)  # locked in id order: no deadlock between batches
        self._locked.update(dict.fromkeys(wanted))
        self._locked.update({r["id"]: Order(OrderStatus(r["status"]), StockAnswer(r["stock_status"]),
                                            PaymentAnswer(r["payment_status"]), r["reason"]) for r in rows})

    async def lock(self, order_id: uuid.UUID) -> Order | None:
        await self.lock_all((order_id,))
        return self._locked[order_id]

    async def save(self, order_id: uuid.UUID, order: Order) -> None:
        self._locked[order_id] = self._changed[order_id] = order

    async def flush(self) -> None:
        if not self._changed:
            return
        changed, self._changed = self._changed, {}
        orders = changed.values()
        await self.db.execute(_SAVE, list(changed), [o.status for o in orders], [o.stock for o in orders],
                              [o.payment for o in orders], [o.reason for o in orders])


_LOCK = ("SELECT id, status, stock_status, payment_status, reason FROM orders WHERE id = ANY($1::uuid[]) "
         "ORDER BY id FOR UPDATE")
_SAVE = (
    "UPDATE orders SET status = o.status, stock_status = o.stock, payment_status = o.payment, reason = o.reason, "
    "decided_at = CASE WHEN o.status <> 'PENDING' THEN coalesce(orders.decided_at, statement_timestamp()) END "
    "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) "
    "AS o(id, status, stock, payment, reason) "
    "WHERE orders.id = o.id")
