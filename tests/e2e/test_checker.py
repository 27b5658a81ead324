"""The invariant checker catches lost stock, lost money and half-done orders, and says when it cannot check."""

import asyncio
import os
import subprocess
import sys

import psycopg

from services.checker import run_checks

from .test_orders_api import PLENTY, RICH


def sql(settings, service: str, statement: str) -> None:
    with psycopg.connect(f"{settings.pg.rstrip('/')}/{settings.database(service)}", autocommit=True) as conn:
        conn.execute(statement)


def txlab_check(settings, **env: str) -> subprocess.CompletedProcess:
    full = os.environ | settings.child_env() | env
    return subprocess.run([sys.executable, "-m", "services.cli", "check"], env=full, capture_output=True,
                          text=True, timeout=60)


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
    result = await asyncio.to_thread(txlab_check, settings, TXLAB_PG="postgresql://postgres@127.0.0.1:9")
    assert result.returncode == 2
    assert "cannot check" in result.stderr
