"""Where inventory keeps stock and reservations: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.inventory.domain import Held, Line, ReservationStatus


class Stock(Protocol):
    async def lock_available(self, skus: list[str]) -> dict[str, int]: ...

    async def held(self, order_id: uuid.UUID) -> Held: ...

    async def reserve(self, order_id: uuid.UUID, lines: tuple[Line, ...]) -> None: ...

    async def settle(self, order_id: uuid.UUID, lines: tuple[Line, ...], to: ReservationStatus) -> None: ...


class SqlStock:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock_available(self, skus: list[str]) -> dict[str, int]:
        # rows locked in one order: no deadlock between two orders of the same skus
        rows = await self.conn.execute(sa.text(
            "SELECT sku, available FROM products WHERE sku = ANY(:skus) ORDER BY sku FOR UPDATE"),
            {"skus": sorted(set(skus))})
        return {r.sku: r.available for r in rows}

    async def lock_batch(self, skus: set[str], order_ids: set[uuid.UUID]) -> None:
        """Lock, in sku order, the products `skus` name and those `order_ids` hold reservations of: a batch
        then takes its rows in the same order as another batch, or a TCC try, and cannot deadlock with them."""
        await self.conn.execute(_LOCK_BATCH, {"skus": sorted(skus), "orders": list(order_ids)})

    async def held(self, order_id: uuid.UUID) -> Held:
        rows = (await self.conn.execute(sa.text(
            "SELECT sku, qty, status FROM reservations WHERE order_id = :o ORDER BY sku FOR UPDATE"),
            {"o": order_id})).all()
        if not rows:
            return Held()
        return Held(ReservationStatus(rows[0].status), tuple(Line(r.sku, r.qty) for r in rows))

    async def reserve(self, order_id: uuid.UUID, lines: tuple[Line, ...]) -> None:
        # one statement: the stock moves and the reservation rows are written together
        await self.conn.execute(_RESERVE, {"o": order_id} | _arrays(lines))

    async def settle(self, order_id: uuid.UUID, lines: tuple[Line, ...], to: ReservationStatus) -> None:
        await self.conn.execute(_SOLD if to is ReservationStatus.SOLD else _RELEASED,
                                {"to": to, "o": order_id} | _arrays(lines))


def _arrays(lines: tuple[Line, ...]) -> dict[str, list[object]]:
    ordered = sorted(lines, key=lambda line: line.sku)  # in sku order, as lock_available and lock_batch take them
    return {"skus": [line.sku for line in ordered], "qtys": [line.qty for line in ordered]}


_LOCK_BATCH = sa.text(
    "SELECT sku FROM products WHERE sku = ANY(CAST(:skus AS text[])) OR sku IN "
    "(SELECT sku FROM reservations WHERE order_id = ANY(CAST(:orders AS uuid[]))) ORDER BY sku FOR UPDATE")
_LINES = "unnest(CAST(:skus AS text[]), CAST(:qtys AS integer[])) AS line(sku, qty)"
_RESERVE = sa.text(
    "WITH moved AS (UPDATE products SET available = available - line.qty, reserved = reserved + line.qty "
    f"FROM {_LINES} WHERE products.sku = line.sku) "
    f"INSERT INTO reservations (order_id, sku, qty, status) SELECT :o, sku, qty, 'RESERVED' FROM {_LINES}")


def _settle(moved: str) -> sa.TextClause:
    """The reservation settled and its stock moved from reserved to `moved`, in one statement."""
    return sa.text(
        "WITH settled AS (UPDATE reservations SET status = :to, updated_at = now() "
        "WHERE order_id = :o AND status = 'RESERVED') "
        f"UPDATE products SET reserved = reserved - line.qty, {moved} = {moved} + line.qty "
        f"FROM {_LINES} WHERE products.sku = line.sku")


_SOLD = _settle("sold")
_RELEASED = _settle("available")
