"""Where payment keeps balances and payments: the Protocol its use cases need, and PostgreSQL behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from services.common.db import Sql
from services.payment.domain import Payment, PaymentStatus


class Money(Protocol):
    async def lock_balance(self, customer_id: str) -> int | None: ...

    async def payment(self, order_id: uuid.UUID) -> Payment | None: ...

    async def record(self, order_id: uuid.UUID, payment: Payment, reason: str | None) -> None: ...

    async def add_to_balance(self, customer_id: str, cents: int) -> None: ...


class SqlMoney:
    """The money of one unit of work (`uow.repository(SqlMoney)`): a batch costs two statements, however many
    messages it holds.

    `load` locks and reads in one statement the payments of the batch's orders, then the balances of the
    customers it names and of those payments, in id order (no deadlock with another batch or a TCC try). The
    handlers then read and change this copy one message after another, each seeing what the ones before it did
    (two orders of one customer in a batch are charged against one balance), and `flush` writes every payment and
    balance change in one statement before the commit. What a handler asks for that was not loaded is loaded
    (and locked) when it asks."""

    def __init__(self, db: Sql) -> None:
        self.db = db
        self._balances: dict[str, int | None] = {}  # None: no such customer
        self._payments: dict[uuid.UUID, Payment | None] = {}
        self._recorded: dict[uuid.UUID, tuple[Payment, str | None]] = {}
        self._added: dict[str, int] = {}

    async def load(self, customer_ids: Iterable[str], order_ids: Iterable[uuid.UUID]) -> None:
        customers = sorted(set(customer_ids) - self._balances.keys())
        orders = list(set(order_ids) - self._payments.keys())
        if not customers and not orders:
            return
        self._balances.update(dict.fromkeys(customers))
        self._payments.update(dict.fromkeys(orders))
        for r in await self.db.fetch(_LOAD, customers, orders):
            if r["order_id"] is None:
                self._balances[r["customer_id"]] = r["cents"]
            else:
                self._payments[r["order_id"]] = Payment(PaymentStatus(r["status"]), r["customer_id"], r["cents"])

    async def lock_balance(self, customer_id: str) -> int | None:
        await self.load((customer_id,), ())
        return self._balances[customer_id]

    async def payment(self, order_id: uuid.UUID) -> Payment | None:
        await self.load((), (order_id,))
        return self._payments[order_id]

    async def record(self, order_id: uuid.UUID, payment: Payment, reason: str | None) -> None:
        self._payments[order_id] = payment
        self._recorded[order_id] = (payment, reason)

    async def add_to_balance(self, customer_id: str, cents: int) -> None:
        await self.load((customer_id,), ())
        balance = self._balances[customer_id]
        if balance is None:
            raise LookupError(f"no customer {customer_id!r}")
        self._balances[customer_id] = balance + cents
        self._added[customer_id] = self._added.get(customer_id, 0) + cents

    async def flush(self) -> None:
        if not (self._recorded or self._added):
            return
        recorded, added = self._recorded, self._added
        self._recorded, self._added = {}, {}
        payments = [p for p, _ in recorded.values()]
        await self.db.execute(
            _WRITE, list(recorded), [p.customer_id for p in payments], [p.amount_cents for p in payments],
            [p.status for p in payments], [reason for _, reason in recorded.values()], list(added),
            list(added.values()))


# The payments of the batch's orders, then the customers (the ones named and the ones those payments charged) in id
# order: rows of customers have no order id
_LOAD = (
    "WITH paid AS (SELECT order_id, customer_id, amount_cents, status FROM payments "
    "WHERE order_id = ANY($2::uuid[]) FOR UPDATE), "
    "who AS (SELECT id, balance_cents FROM customers "
    "WHERE id = ANY($1::text[]) OR id IN (SELECT customer_id FROM paid) ORDER BY id FOR UPDATE) "
    "SELECT NULL::uuid AS order_id, id AS customer_id, balance_cents AS cents, NULL::text AS status FROM who "
    "UNION ALL SELECT order_id, customer_id, amount_cents, status FROM paid")
# Every change of a batch in one statement: the payments recorded (a refund stamps refunded_at), the balances moved
_WRITE = (
    "WITH recorded AS (INSERT INTO payments (order_id, customer_id, amount_cents, status, reason, refunded_at) "
    "SELECT o, c, a, s, r, CASE WHEN s = 'REFUNDED' THEN now() END "
    "FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS p(o, c, a, s, r) "
    "ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, refunded_at = excluded.refunded_at) "
    "UPDATE customers SET balance_cents = balance_cents + d.cents "
    "FROM unnest($6::text[], $7::bigint[]) AS d(id, cents) WHERE customers.id = d.id")
