"""Where inventory keeps stock and reservations: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from services.common.db import Sql
from services.inventory.domain import Held, Line, ReservationStatus


class Stock(Protocol):
    async def lock_available(self, skus: list[str]) -> dict[str, int]: ...

    async def held(self, order_id: uuid.UUID) -> Held: ...

    async def reserve(self, order_id: uuid.UUID, lines: tuple[Line, ...]) -> None: ...

    async def settle(self, order_id: uuid.UUID, lines: tuple[Line, ...], to: ReservationStatus) -> None: ...


class SqlStock:
    """The stock of one unit of work (`uow.repository(SqlStock)`): a batch costs two statements, however many
    messages it holds.

    `load` locks and reads in one statement what the batch will touch: the reservations of its orders, then the
    products its new orders want and those its reservations hold, in sku order (the order every batch and every
    TCC try takes them in: no deadlock). The handlers then read and change this copy one message after another,
    each seeing what the ones before it did, and `flush` writes every change in one statement before the commit.
    What a handler asks for that was not loaded is loaded (and locked) when it asks."""

    def __init__(self, db: Sql) -> None:
        self.db = db
        self._available: dict[str, int] = {}
        self._asked: set[str] = set()  # skus loaded, or asked for and not found
        self._held: dict[uuid.UUID, Held] = {}
        self._moved: dict[str, list[int]] = {}  # sku -> change of [available, reserved, sold]
        self._settled: dict[uuid.UUID, ReservationStatus] = {}  # reservations loaded, whose status changed
        self._reserved: dict[uuid.UUID, Held] = {}  # reservations made in this unit of work, as they end up

    async def load(self, skus: Iterable[str], order_ids: Iterable[uuid.UUID]) -> None:
        skus = sorted(set(skus) - self._asked)
        orders = list(set(order_ids) - self._held.keys())
        if not skus and not orders:
            return
        self._asked.update(skus)
        lines: dict[uuid.UUID, list[Line]] = {order_id: [] for order_id in orders}
        status: dict[uuid.UUID, ReservationStatus] = {}
        for r in await self.db.fetch(_LOAD, skus, orders):
            if r["order_id"] is None:
                self._available[r["sku"]] = r["qty"]
                self._asked.add(r["sku"])
            else:
                lines[r["order_id"]].append(Line(r["sku"], r["qty"]))
                status[r["order_id"]] = ReservationStatus(r["status"])
        for order_id, held in lines.items():
            self._held[order_id] = Held(status[order_id], tuple(sorted(held, key=lambda h: h.sku))) if held else Held()

    async def lock_available(self, skus: list[str]) -> dict[str, int]:
        await self.load(skus, ())
        return {sku: self._available[sku] for sku in skus if sku in self._available}

    async def held(self, order_id: uuid.UUID) -> Held:
        await self.load((), (order_id,))
        return self._held[order_id]

    async def reserve(self, order_id: uuid.UUID, lines: tuple[Line, ...]) -> None:
        await self.load((line.sku for line in lines), ())
        for line in lines:
            self._move(line.sku, -line.qty, line.qty, 0)
            self._available[line.sku] -= line.qty
        self._held[order_id] = self._reserved[order_id] = Held(ReservationStatus.RESERVED, tuple(lines))

    async def settle(self, order_id: uuid.UUID, lines: tuple[Line, ...], to: ReservationStatus) -> None:
        await self.load((line.sku for line in lines), ())
        for line in lines:
            if to is ReservationStatus.SOLD:
                self._move(line.sku, 0, -line.qty, line.qty)
            else:
                self._move(line.sku, line.qty, -line.qty, 0)
                self._available[line.sku] += line.qty
        self._held[order_id] = Held(to, lines)
        if order_id in self._reserved:  # made in this unit of work: written once, as it ends up
            self._reserved[order_id] = self._held[order_id]
        else:
            self._settled[order_id] = to

    def _move(self, sku: str, available: int, reserved: int, sold: int) -> None:
        change = self._moved.setdefault(sku, [0, 0, 0])
        change[0] += available
        change[1] += reserved
        change[2] += sold

    async def flush(self) -> None:
        if not (self._moved or self._settled or self._reserved):
            return
        moved, settled, reserved = self._moved, self._settled, self._reserved
        self._moved, self._settled, self._reserved = {}, {}, {}
        new = [(order_id, line, held.status) for order_id, held in reserved.items() for line in held.lines]
        await self.db.execute(
            _WRITE, list(moved), [m[0] for m in moved.values()], [m[1] for m in moved.values()],
            [m[2] for m in moved.values()], list(settled), list(settled.values()),
            [n[0] for n in new], [n[1].sku for n in new], [n[1].qty for n in new], [n[2] for n in new])


# The reservations of the batch's orders, then the products (the ones named and the ones those reservations
# hold) in sku order: rows of products have no order id
_LOAD = (
    "WITH held AS (SELECT order_id, sku, qty, status FROM reservations WHERE order_id = ANY($2::uuid[]) FOR UPDATE), "
    "stock AS (SELECT sku, available FROM products WHERE sku = ANY($1::text[]) OR sku IN (SELECT sku FROM held) "
    "ORDER BY sku FOR UPDATE) "
    "SELECT NULL::uuid AS order_id, sku, available AS qty, NULL::text AS status FROM stock "
    "UNION ALL SELECT order_id, sku, qty, status FROM held")
# Every change of a batch in one statement: the stock moved per sku, the reservations settled, the new ones
_WRITE = (
    "WITH moved AS (UPDATE products SET available = available + d.to_available, "
    "reserved = reserved + d.to_reserved, sold = sold + d.to_sold "
    "FROM unnest($1::text[], $2::integer[], $3::integer[], $4::integer[]) "
    "AS d(sku, to_available, to_reserved, to_sold) WHERE products.sku = d.sku), "
    "settled AS (UPDATE reservations SET status = s.status, updated_at = now() "
    "FROM unnest($5::uuid[], $6::text[]) AS s(order_id, status) "
    "WHERE reservations.order_id = s.order_id AND reservations.status = 'RESERVED') "
    "INSERT INTO reservations (order_id, sku, qty, status) "
    "SELECT * FROM unnest($7::uuid[], $8::text[], $9::integer[], $10::text[])")
