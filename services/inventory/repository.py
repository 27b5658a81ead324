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

    async def held(self, order_id: uuid.UUID) -> Held:
        rows = (await self.conn.execute(sa.text(
            "SELECT sku, qty, status FROM reservations WHERE order_id = :o ORDER BY sku FOR UPDATE"),
            {"o": order_id})).all()
        if not rows:
            return Held()
        return Held(ReservationStatus(rows[0].status), tuple(Line(r.sku, r.qty) for r in rows))

    async def reserve(self, order_id: uuid.UUID, lines: tuple[Line, ...]) -> None:
        for line in sorted(lines, key=lambda line: line.sku):
            await self.conn.execute(sa.text(
                "UPDATE products SET available = available - :q, reserved = reserved + :q WHERE sku = :s"),
                {"q": line.qty, "s": line.sku})
        await self.conn.execute(sa.text(
            "INSERT INTO reservations (order_id, sku, qty, status) VALUES (:o, :s, :q, 'RESERVED')"),
            [{"o": order_id, "s": line.sku, "q": line.qty} for line in lines])

    async def settle(self, order_id: uuid.UUID, lines: tuple[Line, ...], to: ReservationStatus) -> None:
        moved = "sold" if to is ReservationStatus.SOLD else "available"
        for line in sorted(lines, key=lambda line: line.sku):
            await self.conn.execute(sa.text(
                f"UPDATE products SET reserved = reserved - :q, {moved} = {moved} + :q WHERE sku = :s"),
                {"q": line.qty, "s": line.sku})
        await self.conn.execute(sa.text(
            "UPDATE reservations SET status = :to, updated_at = now() WHERE order_id = :o AND status = 'RESERVED'"),
            {"to": to, "o": order_id})
