"""The invariant checker (`txlab check`): proves from the databases that no stock or money was lost.

Exit codes: 0 every invariant holds, 1 a violation, 2 the system could not be checked.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import psycopg
from psycopg.rows import namedtuple_row

from services.common.bus import queue_depths
from services.common.settings import SERVICES, Settings

OK, VIOLATED, UNCHECKABLE = 0, 1, 2


class CannotCheck(RuntimeError):
    """A database is unreachable or not migrated."""


@dataclass
class Invariant:
    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "holds": self.holds, "checked": self.checked, "counts": self.counts,
                "violations": self.violations[:20], "violation_count": len(self.violations)}


@dataclass
class Report:
    invariants: list[Invariant]

    @property
    def exit_code(self) -> int:
        return OK if all(i.holds for i in self.invariants) else VIOLATED

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.exit_code == OK, "invariants": [i.to_dict() for i in self.invariants]}


def _snapshot(settings: Settings, service: str, *statements: str) -> list[list[Any]]:
    """The rows of each statement, all read from one snapshot of the service's database."""
    try:
        with psycopg.connect(settings.raw_dsn(service), connect_timeout=5, row_factory=namedtuple_row) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                return [conn.execute(sql).fetchall() for sql in statements]
    except psycopg.Error as exc:
        raise CannotCheck(f"{settings.database(service)}: {str(exc).strip()}") from exc


def _query(settings: Settings, service: str, sql: str) -> list[Any]:
    return _snapshot(settings, service, sql)[0]


def check_stock(settings: Settings) -> Invariant:
    inv = Invariant("stock: initial = available + reserved + sold, never negative")
    products, reservations = _snapshot(settings, "inventory",
                                       "SELECT sku, initial, available, reserved, sold FROM products",
                                       "SELECT sku, status, qty FROM reservations")
    held: dict[tuple[str, str], int] = Counter()
    for r in reservations:
        held[(r.sku, r.status)] += r.qty
    for p in products:
        inv.checked += 1
        if p.initial != p.available + p.reserved + p.sold:
            inv.violations.append(f"{p.sku}: initial {p.initial} != {p.available}+{p.reserved}+{p.sold}")
        if min(p.available, p.reserved, p.sold) < 0:
            inv.violations.append(f"{p.sku}: negative stock {p.available}/{p.reserved}/{p.sold}")
        if p.reserved != held[(p.sku, "RESERVED")] or p.sold != held[(p.sku, "SOLD")]:
            inv.violations.append(f"{p.sku}: counters {p.reserved}/{p.sold} disagree with reservations "
                                  f"{held[(p.sku, 'RESERVED')]}/{held[(p.sku, 'SOLD')]}")
    inv.counts = {"skus": len(products), "units_sold": sum(p.sold for p in products),
                  "units_reserved": sum(p.reserved for p in products)}
    return inv


def check_money(settings: Settings) -> Invariant:
    inv = Invariant("money: balances + captured - refunded = initial, never negative")
    customers, payments = _snapshot(settings, "payment", "SELECT id, initial_cents, balance_cents FROM customers",
                                    "SELECT customer_id, amount_cents, status FROM payments")
    captured: dict[str, int] = Counter()
    refunded = 0
    for p in payments:
        if p.status == "CAPTURED":
            captured[p.customer_id] += p.amount_cents
        elif p.status == "REFUNDED":
            refunded += p.amount_cents
    for c in customers:
        inv.checked += 1
        if c.balance_cents < 0:
            inv.violations.append(f"{c.id}: negative balance {c.balance_cents}")
        if c.balance_cents + captured[c.id] != c.initial_cents:
            inv.violations.append(f"{c.id}: balance {c.balance_cents} + captured {captured[c.id]} "
                                  f"!= initial {c.initial_cents}")
    inv.counts = {"customers": len(customers), "captured_cents": sum(captured.values()),
                  "refunded_cents": refunded}
    return inv


def check_agreement(settings: Settings) -> Invariant:
    inv = Invariant("agreement: PAID = charged once + stock deducted; CANCELLED holds nothing")
    order_rows, item_rows = _snapshot(settings, "order", "SELECT id, status, total_cents FROM orders",
                                      "SELECT order_id, sku, qty FROM order_items")
    orders = {o.id: o for o in order_rows}
    items: dict[Any, set[tuple[str, int]]] = defaultdict(set)
    for i in item_rows:
        items[i.order_id].add((i.sku, i.qty))
    payments = {p.order_id: p for p in _query(settings, "payment",
                                              "SELECT order_id, amount_cents, status FROM payments")}
    reservations: dict[Any, dict[str, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    for r in _query(settings, "inventory", "SELECT order_id, sku, qty, status FROM reservations"):
        reservations[r.order_id][r.status].add((r.sku, r.qty))
    for oid in (set(payments) | set(reservations)) - set(orders):
        inv.violations.append(f"effect for unknown order {oid}")
    status_counts: Counter[str] = Counter()
    for oid, o in orders.items():
        inv.checked += 1
        status_counts[o.status] += 1
        pay, held = payments.get(oid), reservations.get(oid, {})
        if o.status == "PAID":
            if pay is None or pay.status != "CAPTURED" or pay.amount_cents != o.total_cents:
                inv.violations.append(f"PAID order {oid}: payment {pay and (pay.status, pay.amount_cents)} "
                                      f"instead of CAPTURED {o.total_cents}")
            if held.get("SOLD", set()) != items[oid] or held.get("RESERVED") or held.get("RELEASED"):
                inv.violations.append(f"PAID order {oid}: stock {dict(held)} instead of SOLD {items[oid]}")
        elif o.status == "CANCELLED":
            if pay is not None and pay.status == "CAPTURED":
                inv.violations.append(f"CANCELLED order {oid} still holds a captured payment")
            if held.get("RESERVED") or held.get("SOLD"):
                inv.violations.append(f"CANCELLED order {oid} still holds stock {dict(held)}")
    inv.counts = dict(status_counts)
    return inv


def queued_messages(settings: Settings) -> dict[str, int]:
    """Messages waiting in each service's event queue and parking queue (events a consumer gave up on).
    Messages a consumer holds unacknowledged are not counted here; `run_checks` covers them by evaluating
    again until its deadline."""
    try:
        return asyncio.run(queue_depths(settings))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        raise CannotCheck(f"RabbitMQ at {settings.amqp.rsplit('@', 1)[-1]}: {exc!r}") from exc


def convergence_counts(settings: Settings) -> dict[str, int]:
    """What is still in flight: every count must reach 0 once faults are cleared."""
    counts: dict[str, int] = {}
    for service in SERVICES:  # one connection per database and poll
        outbox, prepared, *pending = _snapshot(
            settings, service,
            "SELECT status, count(*) AS n FROM outbox WHERE status <> 'SENT' GROUP BY status",
            "SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database()",
            *(["SELECT count(*) AS n FROM orders WHERE status = 'PENDING'"] if service == "order" else []))
        if pending:
            counts["orders_pending"] = pending[0][0].n
        for r in outbox:
            counts[f"{service}_outbox_{r.status.lower()}"] = r.n
        counts[f"{service}_prepared_xacts"] = prepared[0].n
    counts.update(queued_messages(settings))
    return {k: v for k, v in counts.items() if v or k == "orders_pending"}


def check_convergence(settings: Settings, wait: float = 0.0) -> Invariant:
    inv = Invariant("convergence: nothing pending, unsent, parked or prepared")
    deadline = time.monotonic() + wait
    while True:
        counts = convergence_counts(settings)
        if not any(counts.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    inv.checked = 1
    inv.counts = counts
    inv.violations = [f"{k} = {v}" for k, v in counts.items() if v]
    return inv


def run_checks(settings: Settings, wait: float = 0.0) -> Report:
    """Evaluate every invariant; while one fails, evaluate again until `wait` seconds have passed.

    Waiting matters because an event can be in flight where no count sees it (held unacknowledged by a
    consumer): a PAID order whose stock is not yet SOLD is only a violation if it stays that way."""
    deadline = time.monotonic() + wait
    while True:
        convergence = check_convergence(settings, max(0.0, deadline - time.monotonic()))
        report = Report([check_stock(settings), check_money(settings), check_agreement(settings), convergence])
        if report.exit_code == OK or time.monotonic() >= deadline:
            return report
        time.sleep(0.2)
