"""`txlab bench outbox`: orders/s and latency of the outbox flow next to `pgbench -N` on the same server.

pgbench's simple-update transactions per second are the ceiling of what this PostgreSQL does for small
write transactions. One order costs several of them across the three databases plus several confirmed
RabbitMQ messages; the bench counts both, and the ratio of the flow's commits/s to pgbench's tps says how
close the flow runs to the database's own limit, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
from urllib.parse import unquote, urlsplit

import psycopg
from rich.console import Console
from rich.table import Table

from services.common.settings import DATABASES, Settings, get_settings
from services.demo import ms, percentile, run_demo
from services.seed import SeedPlan

PGBENCH_DB = "txlab_pgbench"


def pgbench_tps(pg_url: str, clients: int, seconds: int) -> float:
    """Run `pgbench -N` (simple updates, no branch contention) and return its tps."""
    if shutil.which("pgbench") is None:
        raise RuntimeError("pgbench is not installed (apt-get install postgresql-contrib)")
    url = urlsplit(pg_url)
    conn = ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    env = os.environ | {"PGPASSWORD": unquote(url.password or "")}
    subprocess.run(["psql", *conn, "-d", "postgres", "-qc", f"DROP DATABASE IF EXISTS {PGBENCH_DB}"],
                   check=True, capture_output=True, env=env)
    subprocess.run(["psql", *conn, "-d", "postgres", "-qc", f"CREATE DATABASE {PGBENCH_DB}"],
                   check=True, capture_output=True, env=env)
    subprocess.run(["pgbench", *conn, "-i", "-q", "-s", "1", PGBENCH_DB], check=True, capture_output=True, env=env)
    out = subprocess.run(["pgbench", *conn, "-N", "-c", str(clients), "-j", "2", "-T", str(seconds), PGBENCH_DB],
                         check=True, capture_output=True, text=True, env=env).stdout
    subprocess.run(["psql", *conn, "-d", "postgres", "-qc", f"DROP DATABASE {PGBENCH_DB}"], capture_output=True,
                   env=env)
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(match.group(1))


def commits_and_messages(settings: Settings) -> tuple[int, int]:
    """Transactions committed in the service databases and the broker's so far, and messages published
    with confirms (outbox rows sent, half messages delivered)."""
    commits = messages = 0
    for database in DATABASES:
        with psycopg.connect(settings.raw_dsn(database)) as conn:
            commits += conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                    ).fetchone()[0]
            messages += conn.execute("SELECT count(*) FROM half_messages WHERE state = 'DELIVERED'" if
                                     database == "broker" else "SELECT count(*) FROM outbox WHERE status = 'SENT'"
                                     ).fetchone()[0]
    return commits, messages


def main(argv: list[str]) -> int:
    return run("txlab bench outbox", argv, ["outbox"])


def run(prog: str, argv: list[str], patterns: list[str], reference: str = "") -> int:
    """Each pattern at each concurrency, with pgbench -N measured just before at the same concurrency.
    `reference` is printed under the table (a published figure to compare the ratio with)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--patterns", nargs="+", default=patterns, choices=["outbox", "halfmsg", "tcc", "2pc", "3pc"])
    parser.add_argument("--store", default=None, help="the coordinator's store: raft (default) or etcd://host:port")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 200))
    settings = get_settings()
    if args.store:
        settings = settings.model_copy(update={"coordinator_store": args.store})
    plan = SeedPlan(products=200, customers=1000, stock=100_000, scarce_share=0.02, poor_share=0.02)
    table = Table(title=f"{' and '.join(args.patterns)} vs pgbench -N ({args.orders} orders per run, same PostgreSQL)")
    for col in ("pattern", "in flight", "orders/s", "POST p50 / p99", "e2e p50 / p99", "commits/order",
                "msgs/order", "commits/s", "pgbench -N tps", "commits/s ÷ tps", "orders/s ÷ tps", "invariants"):
        table.add_column(col, justify="right")
    before: list[tuple[int, int]] = []
    violated = False
    for c in args.concurrency:
        console.print(f"[dim]pgbench -N -c {c} for {args.pgbench_seconds}s…[/dim]")
        tps = pgbench_tps(settings.pg, c, args.pgbench_seconds)
        for pattern in args.patterns:
            result = asyncio.run(run_demo(settings, orders=args.orders, concurrency=c, pattern=pattern, plan=plan,
                                          console=console,
                                          on_seeded=lambda: before.append(commits_and_messages(settings))))
            after = commits_and_messages(settings)
            holds = result.report is not None and result.report.exit_code == 0
            violated = violated or not holds
            for inv in (result.report.invariants if result.report else []):
                for violation in inv.violations[:5]:
                    console.print(f"[red]✗ {pattern} at {c} in flight: {inv.name.split(':')[0]}: {violation}[/red]")
            if not result.placed:
                console.print(f"[red]no {pattern} order was placed at {c} in flight[/red]")
                return 1
            # the checker and the convergence polls commit read-only transactions too: counted in
            commits = (after[0] - before[-1][0]) / result.placed
            messages = (after[1] - before[-1][1]) / result.placed
            commits_per_s = commits * result.throughput
            table.add_row(pattern, str(c), f"{result.throughput:.1f}",
                          f"{ms(percentile(result.post_latencies, 50))} / {ms(percentile(result.post_latencies, 99))}",
                          f"{ms(percentile(result.e2e_latencies, 50))} / {ms(percentile(result.e2e_latencies, 99))}",
                          f"{commits:.1f}", f"{messages:.1f}", f"{commits_per_s:.0f}", f"{tps:.0f}",
                          f"{commits_per_s / tps:.2f}", f"{result.throughput / tps:.4f}",
                          "hold" if holds else "[red]VIOLATED[/red]")
    console.print(table)
    console.print("commits/order counts every transaction the service databases and the broker's committed "
                  "during the run (including the convergence polls); msgs/order the messages published with "
                  "confirms (outbox rows, half messages)")
    if reference:
        console.print(reference)
    return 1 if violated else 0
