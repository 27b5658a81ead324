"""A batch of messages against real PostgreSQL: each message sees what the ones before it in the batch did (two
charges of one customer against one balance, two reservations of one scarce sku), and the batch costs the same
few statements however many messages it holds."""

import asyncio
import uuid

import pytest

from services.common.db import Sql, make_engine, migrate, transaction
from services.common.envelope import Envelope
from services.inventory.handlers import apply_stock_event, lock_stock
from services.inventory.repository import SqlStock
from services.messaging.inbox import UnitOfWork
from services.payment.handlers import apply_payment_event, lock_money
from services.payment.repository import SqlMoney


class Counted(Sql):
    """Counts the statements a unit of work sends."""

    __slots__ = ("sent",)

    def __init__(self, db: Sql) -> None:
        super().__init__(db.driver)
        self.sent = 0

    async def fetch(self, query, *args):
        self.sent += 1
        return await super().fetch(query, *args)

    async def execute(self, query, *args):
        self.sent += 1
        return await super().execute(query, *args)


@pytest.fixture(scope="module")
async def engines(settings):
    for service in ("inventory", "payment"):
        await asyncio.to_thread(migrate, settings, service)
    engines = {s: make_engine(settings.model_copy(update={"db_pool_size": 1}), s) for s in ("inventory", "payment")}
    yield engines
    for engine in engines.values():
        await engine.dispose()


async def apply(engine, prepare, handler, repository, events: list[Envelope]) -> tuple[list[Envelope], int]:
    """Apply `events` as one batch, the way a consumer does (minus the inbox); return the emitted events and the
    number of statements sent."""
    async with transaction(engine) as db:
        uow = UnitOfWork(Counted(db))
        await prepare(uow, events)
        for event in events:
            await handler(uow.repository(repository), uow, event)
        emitted = list(uow.emitted)
        uow.emitted.clear()
        await uow.flush()
        return emitted, uow.db.sent


def created(customer: str, cents: int, items: dict[str, int]) -> Envelope:
    return Envelope(type="order.created", order_id=uuid.uuid4(), payload={
        "customer_id": customer, "total_cents": cents, "items": [{"sku": s, "qty": q} for s, q in items.items()]})


async def test_a_batch_charges_one_customer_in_order_against_one_balance(engines):
    engine, customer = engines["payment"], f"c-{uuid.uuid4().hex[:8]}"
    async with transaction(engine) as db:
        await db.execute("INSERT INTO customers (id, name, initial_cents, balance_cents) VALUES ($1, 'x', 100, 100)",
                         customer)
    first, second, third = created(customer, 60, {}), created(customer, 60, {}), created(customer, 40, {})
    emitted, sent = await apply(engine, lock_money, apply_payment_event, SqlMoney, [first, second, third])
    assert [e.type for e in emitted] == ["payment.succeeded", "payment.failed", "payment.succeeded"]
    assert "60 cents due, 40 available" in emitted[1].payload["reason"]
    assert sent == 2  # one load, one write, for three messages
    async with transaction(engine) as db:
        assert await db.fetchval("SELECT balance_cents FROM customers WHERE id = $1", customer) == 0
        rows = {r["order_id"]: r["status"] for r in await db.fetch(
            "SELECT order_id, status FROM payments WHERE customer_id = $1", customer)}
    assert rows == {first.order_id: "CAPTURED", second.order_id: "FAILED", third.order_id: "CAPTURED"}

    cancelled = first.caused("order.cancelled", {"reason": "stock"})
    emitted, _ = await apply(engine, lock_money, apply_payment_event, SqlMoney, [cancelled, cancelled])
    assert [e.type for e in emitted] == ["payment.refunded"]  # a refund is given once, even twice in a batch
    async with transaction(engine) as db:
        assert await db.fetchval("SELECT balance_cents FROM customers WHERE id = $1", customer) == 60
        row = await db.fetch("SELECT status, refunded_at FROM payments WHERE order_id = $1", first.order_id)
    assert row[0]["status"] == "REFUNDED" and row[0]["refunded_at"] is not None


async def test_a_batch_reserves_a_scarce_sku_for_the_first_order_only(engines):
    engine, sku, other = engines["inventory"], f"s-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    async with transaction(engine) as db:
        await db.execute("INSERT INTO products (sku, name, price_cents, initial, available) "
                         "VALUES ($1, 'x', 1, 5, 5), ($2, 'y', 1, 9, 9)", sku, other)
    first, second = created("c", 0, {sku: 3, other: 1}), created("c", 0, {sku: 3, other: 1})
    emitted, sent = await apply(engine, lock_stock, apply_stock_event, SqlStock, [first, second])
    assert [e.type for e in emitted] == ["stock.reserved", "stock.rejected"]
    assert f"{sku}: 3 wanted, 2 available" in emitted[1].payload["reason"]
    assert sent == 2
    paid, cancelled = first.caused("order.paid", {}), second.caused("order.cancelled", {})
    third = created("c", 0, {sku: 2})
    emitted, sent = await apply(engine, lock_stock, apply_stock_event, SqlStock, [paid, cancelled, third])
    assert [e.type for e in emitted] == ["stock.reserved"]  # the rejected order has nothing to release
    assert sent == 2
    async with transaction(engine) as db:
        stock = {r["sku"]: tuple(r)[1:] for r in await db.fetch(
            "SELECT sku, available, reserved, sold FROM products WHERE sku = ANY($1::text[])", [sku, other])}
        held = {(r["order_id"], r["sku"]): r["status"] for r in await db.fetch(
            "SELECT order_id, sku, status FROM reservations WHERE sku = $1", sku)}
    assert stock == {sku: (0, 2, 3), other: (8, 0, 1)}
    assert held == {(first.order_id, sku): "SOLD", (third.order_id, sku): "RESERVED"}


async def test_an_order_reserved_and_settled_in_one_batch_is_written_once_as_it_ends(engines):
    engine, sku = engines["inventory"], f"s-{uuid.uuid4().hex[:8]}"
    async with transaction(engine) as db:
        await db.execute("INSERT INTO products (sku, name, price_cents, initial, available) "
                         "VALUES ($1, 'x', 1, 5, 5)", sku)
    order = created("c", 0, {sku: 2})
    emitted, _ = await apply(engine, lock_stock, apply_stock_event, SqlStock,
                             [order, order.caused("order.cancelled", {"reason": "payment"})])
    assert [e.type for e in emitted] == ["stock.reserved", "stock.released"]
    async with transaction(engine) as db:
        stock = await db.fetch("SELECT available, reserved, sold FROM products WHERE sku = $1", sku)
        assert tuple(stock[0]) == (5, 0, 0)
        assert await db.fetchval("SELECT status FROM reservations WHERE order_id = $1", order.order_id) == "RELEASED"
