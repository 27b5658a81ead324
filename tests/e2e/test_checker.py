"""The invariant checker catches lost stock, lost money and half-done orders, and says when it cannot check."""

import asyncio
import os
import subprocess
import sys
import uuid

import psycopg

from services import checker
from services.checker import run_checks

from .test_orders_api import PLENTY, RICH


def sql(settings, service: str, statement: str) -> None:
    with psycopg.connect(f"{settings.pg.rstrip('/')}/{settings.database(service)}", autocommit=True) as conn:
        conn.execute(statement)


def txlab_check(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = os.environ | settings.child_env() | env
    return subprocess.run([sys.executable, "-m", "services.cli", "check", *args], env=full, capture_output=True,
                          text=True, timeout=90)


def failing(report) -> list[str]:
    return [inv.name.split(":")[0] for inv in report.invariants if not inv.holds]


async def test_checker_reports_lost_stock_and_money_and_exits_1(settings, system):
    assert (await asyncio.to_thread(run_checks, settings, 30.0)).exit_code == 0
    sql(settings, "inventory", "UPDATE products SET available = available - 1 WHERE sku = 'sku-0000'")
    sql(settings, "payment", "UPDATE customers SET balance_cents = balance_cents + 1 WHERE id = 'c00000'")
    try:
        report = await asyncio.to_thread(run_checks, settings)
        assert failing(report) == ["stock", "money"]
        result = await asyncio.to_thread(txlab_check, settings)
        assert result.returncode == 1 and "sku-0000" in result.stdout and "c00000" in result.stdout
    finally:
        sql(settings, "inventory", "UPDATE products SET available = available + 1 WHERE sku = 'sku-0000'")
        sql(settings, "payment", "UPDATE customers SET balance_cents = balance_cents - 1 WHERE id = 'c00000'")
    assert (await asyncio.to_thread(txlab_check, settings)).returncode == 0


async def test_checker_flags_a_paid_order_whose_payment_vanished(settings, system, client):
    _, order = await client.place({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]})
    assert (await asyncio.to_thread(run_checks, settings, 30.0)).exit_code == 0
    order_id = order["id"]
    sql(settings, "payment", f"UPDATE payments SET status = 'FAILED' WHERE order_id = '{order_id}'")
    try:
        report = await asyncio.to_thread(run_checks, settings)
        assert "agreement" in failing(report)
    finally:
        sql(settings, "payment", f"UPDATE payments SET status = 'CAPTURED' WHERE order_id = '{order_id}'")


async def test_check_exits_2_with_a_message_when_the_database_is_unreachable(settings):
    result = await asyncio.to_thread(txlab_check, settings, "--wait", "2", TXLAB_PG="postgresql://postgres@127.0.0.1:9")
    assert result.returncode == 2
    assert "waiting up to 2s (--wait)" in result.stderr and "cannot check" in result.stderr


async def test_an_order_placed_while_the_checker_reads_is_never_an_effect_for_an_unknown_order(
        settings, system, monkeypatch):
    """The checker reads the effects (payments, reservations) before the orders: an order commits before any
    effect of it exists, so whatever effect the checker sees has its order in the later read."""
    order_id = uuid.uuid4()
    real_snapshot = checker._snapshot
    reads: list[str] = []

    def snapshot_then_place_an_order(s, service, *statements):
        rows = real_snapshot(s, service, *statements)
        reads.append(service)
        if len(reads) == 1:  # between the checker's first and second read, an order is placed and charged
            sql(settings, "order", f"INSERT INTO orders (id, customer_id, pattern, status, total_cents, stock_status,"
                                   f" payment_status) VALUES ('{order_id}', '{RICH}', 'outbox', 'PENDING', 0, "
                                   "'PENDING', 'PENDING')")
            sql(settings, "payment", f"INSERT INTO payments (order_id, customer_id, amount_cents, status) "
                                     f"VALUES ('{order_id}', '{RICH}', 0, 'FAILED')")
        return rows

    monkeypatch.setattr(checker, "_snapshot", snapshot_then_place_an_order)
    try:
        invariant = await asyncio.to_thread(checker.check_agreement, settings)
    finally:
        sql(settings, "payment", f"DELETE FROM payments WHERE order_id = '{order_id}'")
        sql(settings, "order", f"DELETE FROM orders WHERE id = '{order_id}'")
    assert not [v for v in invariant.violations if "unknown order" in v], invariant.violations
