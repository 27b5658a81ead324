"""The invariant checker (`txlab check`): proves from the databases that no stock or money was lost.

Exit codes: 0 every invariant holds, 1 a violation, 2 the system could not be checked.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import psycopg
from psycopg.rows import namedtuple_row

from services.common.settings import SERVICES, Settings
from services.coordinator.client import CoordinatorUnavailable, all_transactions, fetch
from services.coordinator.model import FINAL_STATES, PATTERNS, STUCK
from services.messaging.parking import queue_depths
from services.messaging.topology import topology_of
from services.order.coordinated import COORDINATED

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


# transactions the checker committed, per database: a bench counting the services' commits takes them out
OWN_TRANSACTIONS: Counter[str] = Counter()


def _snapshot(settings: Settings, service: str, *statements: str) -> list[list[Any]]:
    """The rows of each statement, all read from one snapshot of the service's database."""
    OWN_TRANSACTIONS[service] += 1
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
    inv = Invariant("money: balances + frozen + captured = initial, never negative")
    customers, payments = _snapshot(settings, "payment",
                                    "SELECT id, initial_cents, balance_cents, frozen_cents FROM customers",
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
        if c.balance_cents < 0 or c.frozen_cents < 0:
            inv.violations.append(f"{c.id}: negative balance {c.balance_cents} or frozen {c.frozen_cents}")
        if c.balance_cents + c.frozen_cents + captured[c.id] != c.initial_cents:
            inv.violations.append(f"{c.id}: balance {c.balance_cents} + frozen {c.frozen_cents} + captured "
                                  f"{captured[c.id]} != initial {c.initial_cents}")
    inv.counts = {"customers": len(customers), "captured_cents": sum(captured.values()),
                  "refunded_cents": refunded, "frozen_cents": sum(c.frozen_cents for c in customers)}
    return inv


def check_agreement(settings: Settings) -> Invariant:
    inv = Invariant("agreement: PAID = charged once + stock deducted; CANCELLED holds nothing")
    # the effects first, the orders last: an order commits before any effect of it exists, so every effect
    # read here has its order visible below, even when orders are placed while the check runs
    payments = {p.order_id: p for p in _query(settings, "payment",
                                              "SELECT order_id, amount_cents, status FROM payments")}
    reservations: dict[Any, dict[str, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    for r in _query(settings, "inventory", "SELECT order_id, sku, qty, status FROM reservations"):
        reservations[r.order_id][r.status].add((r.sku, r.qty))
    order_rows, item_rows = _snapshot(settings, "order", "SELECT id, status, total_cents FROM orders",
                                      "SELECT order_id, sku, qty FROM order_items")
    orders = {o.id: o for o in order_rows}
    items: dict[Any, set[tuple[str, int]]] = defaultdict(set)
    for i in item_rows:
        items[i.order_id].add((i.sku, i.qty))
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


def half_message_deadline(settings: Settings) -> float:
    """Seconds after which a half message must have left HALF: its immunity plus every check-back."""
    return settings.broker_immunity_seconds + settings.broker_max_checks * settings.broker_check_interval_seconds


def check_half_messages(settings: Settings) -> Invariant:
    """halfmsg: every halfmsg order had its order.created delivered, and no message was delivered (or
    committed) for an order that does not exist, a rolled-back one included."""
    inv = Invariant("halfmsg: each halfmsg order's event delivered; none for an order that does not exist")
    messages = _query(settings, "broker", "SELECT body->>'order_id' AS order_id, state FROM half_messages "
                                          "WHERE topic = 'order.created'")
    orders = {str(r.id) for r in _query(settings, "order", "SELECT id FROM orders WHERE pattern = 'halfmsg'")}
    known = {str(r.id) for r in _query(settings, "order", "SELECT id FROM orders")} if messages else set()
    delivered = {m.order_id for m in messages if m.state == "DELIVERED"}
    for oid in sorted(orders - delivered):
        inv.violations.append(f"halfmsg order {oid} has no delivered order.created")
    for m in messages:
        if m.state in ("DELIVERED", "COMMITTED") and m.order_id not in known:
            inv.violations.append(f"order.created {m.state} for order {m.order_id}, which does not exist")
    inv.checked = len(orders) + len(messages)
    states = Counter(m.state for m in messages)
    inv.counts = {"halfmsg_orders": len(orders)} | {f"messages_{k.lower()}": v for k, v in sorted(states.items())}
    return inv


def check_coordinated(settings: Settings) -> Invariant:
    """tcc, 2pc, 3pc: each order agrees with its global transaction; nothing is held (frozen money, reserved
    stock) by a branch whose transaction is over; and no branch ended otherwise than its transaction decided,
    which is the inconsistency 3PC's timeout-commit makes under a partition."""
    inv = Invariant("coordinated: orders agree with their transactions; every branch ended as decided; nothing "
                    "held without a live transaction")
    patterns = ",".join(COORDINATED)
    orders = {str(r.id): (r.status, r.pattern) for r in _query(
        settings, "order", f"SELECT id, status, pattern FROM orders WHERE pattern = ANY('{{{patterns}}}')")}
    held = {(r.gid, r.branch) for service in ("inventory", "payment") for r in _query(
        settings, service, "SELECT t.gid, t.branch FROM tcc_barrier t WHERE t.op = 'try' AND t.held AND NOT EXISTS "
                           "(SELECT 1 FROM tcc_barrier s WHERE s.gid = t.gid AND s.branch = t.branch "
                           "AND s.op IN ('confirm', 'cancel'))")}
    # the branches a participant committed, as it knows them (a 3PC one may have committed on its own)
    committed = {(r.gid, r.branch): r.outcome for service in ("inventory", "payment") for r in _query(
        settings, service, "SELECT gid, branch, outcome FROM tcc_barrier WHERE op IN ('xa', '3pc') "
                           "AND outcome LIKE 'COMMITTED%'")}
    if not orders and not held and not committed:
        return inv
    try:
        records = all_transactions(settings)
    except CoordinatorUnavailable as exc:
        raise CannotCheck(f"the coordinator: {exc}") from exc
    if records is None:
        raise CannotCheck("the coordinator is not running, and there are coordinated orders to check")
    by_gid = {r["gid"]: r for r in records}
    for oid, (status, pattern) in sorted(orders.items()):
        inv.checked += 1
        record = by_gid.get(oid)
        p = PATTERNS[pattern]
        if record is None:
            inv.violations.append(f"{status} {pattern} order {oid} has no global transaction")
        elif status in ("PAID", "CANCELLED") and record["state"] != (p.committed if status == "PAID" else p.aborted):
            inv.violations.append(f"{status} {pattern} order {oid}: its transaction is {record['state']}")
    for gid, branch in sorted(held):
        inv.checked += 1
        record = by_gid.get(gid)
        if record is None or record["state"] in FINAL_STATES:
            what = "stock reserved" if branch == "inventory" else "money frozen"
            inv.violations.append(f"{what} by {gid} (branch {branch}) without a live transaction "
                                  f"({record['state'] if record else 'unknown to the coordinator'})")
    for (gid, branch), outcome in sorted(committed.items()):
        inv.checked += 1
        record = by_gid.get(gid)
        if record is None or record["decision"] == "abort":
            why = ("on its own after the 3PC timeout" if outcome == "COMMITTED_ON_TIMEOUT" else outcome.lower())
            inv.violations.append(
                f"split outcome: branch {branch} of {gid} committed ({why}) while its transaction "
                f"{'is unknown to the coordinator' if record is None else 'decided abort (' + record['state'] + ')'}")
    inv.counts = {"coordinated_orders": len(orders), "held_branches": len(held)} | {
        f"txn_{k.lower()}": v for k, v in sorted(Counter(r["state"] for r in records).items())}
    return inv


def coordinator_counts(settings: Settings, coordinated_orders: int) -> dict[str, int]:
    """Global transactions not final (in flight) and STUCK; the coordinator unreachable counts as in flight
    when there are coordinated orders. Without such orders there is no transaction: nothing is asked."""
    if not coordinated_orders:
        return {}
    try:
        page = fetch(settings, "/transactions", {"limit": 1}, deadline=3.0)
    except CoordinatorUnavailable:
        page = None
    if page is None:
        return {"coordinator_unreachable": 1}
    counts = page["counts"]
    live = sum(n for state, n in counts.items() if state not in FINAL_STATES and state != STUCK)
    return {"coordinator_txn_in_flight": live, "coordinator_stuck": counts.get(STUCK, 0)}


def queued_messages(settings: Settings) -> dict[str, int]:
    """Messages ready in each service's event queue and parking queue, and the consumers on each queue."""
    try:
        return asyncio.run(queue_depths(settings.amqp, topology_of(settings)))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        raise CannotCheck(f"RabbitMQ at {settings.amqp.rsplit('@', 1)[-1]}: {exc!r}") from exc


def consumers_in_flight(settings: Settings, consumers: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(messages each service's consumer holds unacknowledged, each service's progress counter).

    A service that does not answer holds nothing when its queue has no consumer (unacked messages go back
    to the queue when a consumer's connection closes); otherwise it counts as `<service>_unreachable`."""
    held: dict[str, int] = {}
    progress: dict[str, int] = {}
    with httpx.Client(timeout=3.0, headers={"authorization": f"Bearer {settings.admin_token}"}) as http:
        for service in SERVICES:
            try:
                answer = http.get(f"{settings.url(service)}/internal/messaging")
                answer.raise_for_status()
                body = answer.json()
            except (httpx.HTTPError, ValueError):
                if consumers.get(f"{service}_consumers", 0):
                    held[f"{service}_unreachable"] = 1
                continue
            held[f"{service}_in_flight"] = int(body["in_flight"])
            progress[service] = int(body["progress"])
    return held, progress


# Counts of work still moving: the system is quiet when each is 0 (and nothing moved between two looks).
IN_FLIGHT = ("_outbox_pending", "_queued", "_in_flight", "_unreachable")  # coordinator_stuck waits for nobody


def in_flight(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v and k.endswith(IN_FLIGHT)}


def _look(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """One look at everything: outbox rows, then queues, then consumers (the direction work moves), and the
    progress counters. A look can still miss work that a consumer finished between two reads (its new outbox
    row written after the outbox was read); the progress counters, compared between looks, catch that."""
    counts: dict[str, int] = {}
    placed = coordinated = 0
    for service in SERVICES:  # one connection per database and look
        outbox, prepared, *orders = _snapshot(
            settings, service,
            "SELECT status, count(*) AS n FROM outbox WHERE status <> 'SENT' GROUP BY status",
            "SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'txlab:%'",
            *(["SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending, count(*) AS placed, "
               f"count(*) FILTER (WHERE pattern = ANY('{{{','.join(COORDINATED)}}}')) AS coordinated FROM orders"]
              if service == "order" else []))
        if orders:
            counts["orders_pending"] = orders[0][0].pending
            placed = orders[0][0].placed
            coordinated = orders[0][0].coordinated
        for r in outbox:
            counts[f"{service}_outbox_{r.status.lower()}"] = r.n
        counts[f"{service}_prepared_in_flight"] = prepared[0].n  # ours only; the sweeper ends each
    counts.update(coordinator_counts(settings, coordinated))
    (half,) = _snapshot(settings, "broker", (
        "SELECT count(*) FILTER (WHERE state = 'HALF' AND created_at > now() - make_interval(secs => "
        f"{half_message_deadline(settings)})) AS half, "
        "count(*) FILTER (WHERE state = 'HALF') AS all_half, "
        "count(*) FILTER (WHERE state = 'PARKED') AS parked, "
        "count(*) FILTER (WHERE state = 'COMMITTED') AS committed, "
        "count(*) FILTER (WHERE state IN ('DELIVERED', 'ROLLED_BACK')) AS settled FROM half_messages"))
    h = half[0]
    counts.update({"broker_half_in_flight": h.half, "broker_half_overdue": h.all_half - h.half,
                   "broker_parked": h.parked, "broker_committed_in_flight": h.committed})
    queues = queued_messages(settings)
    held, progress = consumers_in_flight(settings, queues)
    progress["orders_placed"] = placed  # a new order moves the system even before its first event
    progress["broker_settled"] = h.settled
    counts.update({k: v for k, v in queues.items() if not k.endswith("_consumers")})
    counts.update(held)
    return {k: v for k, v in counts.items() if v or k == "orders_pending"}, progress


def convergence_counts(settings: Settings) -> dict[str, int]:
    """Everything not yet settled (in flight, pending, unsent, parked or prepared); each must reach 0."""
    return _look(settings)[0]


@dataclass
class Quiet:
    """Whether the system is quiet: nothing in flight in two looks in a row, and no progress between them."""

    counts: dict[str, int]
    quiet: bool
    progress: dict[str, int] = field(default_factory=dict)


# told of each look (its counts) or of each failed one (why the system cannot be checked)
Look = Callable[[dict[str, int] | None, CannotCheck | None], None]


def wait_quiet(settings: Settings, wait: float, interval: float = 0.2, on_look: Look | None = None) -> Quiet:
    """Look until the system is quiet or `wait` seconds have passed; return the last look.

    A server that cannot be reached (RabbitMQ or PostgreSQL down) is waited for within the same bound, and
    `CannotCheck` raised only when it is still down at the end. `on_look` sees each look, or each failure."""
    deadline = time.monotonic() + wait
    previous: dict[str, int] | None = None
    while True:
        try:
            counts, progress = _look(settings)
        except CannotCheck as exc:
            if time.monotonic() >= deadline:
                raise
            if on_look:
                on_look(None, exc)
            previous = None
            time.sleep(1.0)
            continue
        if on_look:
            on_look(counts, None)
        if not in_flight(counts):
            if progress == previous:
                return Quiet(counts, True, progress)
            previous = progress
        else:
            previous = None
        if time.monotonic() >= deadline:
            return Quiet(counts, False, progress)
        time.sleep(interval)


def check_convergence(settings: Settings, wait: float = 0.0, on_look: Look | None = None) -> Invariant:
    """Nothing pending, unsent, parked or prepared, judged on a quiet system (waiting up to `wait` seconds
    for it to become quiet)."""
    return _convergence(wait_quiet(settings, wait, on_look=on_look))


def _convergence(look: Quiet) -> Invariant:
    inv = Invariant("convergence: nothing in flight, pending, unsent, parked or prepared")
    inv.checked = 1
    inv.counts = look.counts
    inv.violations = [f"{k} = {v}" for k, v in look.counts.items() if v]
    return inv


def run_checks(settings: Settings, wait: float = 0.0, on_look: Look | None = None) -> Report:
    """Evaluate every invariant on a quiet system, waiting up to `wait` seconds for it to become quiet.

    Judging a busy system would report events in flight as violations (a PAID order whose stock is not yet
    SOLD), so the invariants are evaluated once nothing moves; if the system never quiets down within the
    wait, the convergence invariant names what is still in flight. A violation found while something moved
    again during the evaluation (an order placed meanwhile) is judged again, within the same wait."""
    deadline = time.monotonic() + wait
    while True:
        look = wait_quiet(settings, max(0.0, deadline - time.monotonic()), on_look=on_look)
        report = Report([check_stock(settings), check_money(settings), check_agreement(settings),
                         check_half_messages(settings), check_coordinated(settings), _convergence(look)])
        if report.exit_code == OK or not look.quiet or time.monotonic() >= deadline:
            return report
        counts, progress = _look(settings)
        if counts == look.counts and progress == look.progress:
            return report
