"""`txlab bench outbox`: orders/s and latency of the outbox flow next to `pgbench -N` on the same server.

pgbench's simple-update transactions per second are the ceiling of what this PostgreSQL does for small
write transactions. One order costs several of them across the three databases plus several confirmed
RabbitMQ messages; the bench counts both, and the ratio of the flow's commits/s to pgbench's tps says how
close the flow runs to the database's own limit, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import psycopg
from rich.console import Console
from rich.table import Table

from bench.plot import Panel, figure, save
from services import checker
from services.common.settings import DATABASES, Settings, get_settings
from services.coordinator.store import store_spec
from services.demo import DemoResult, ms, percentile, run_demo
from services.seed import SeedPlan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


ALL_PATTERNS = ["outbox", "halfmsg", "tcc", "2pc", "3pc"]


def _cpu_by_process() -> Iterator[tuple[Path, str, float]]:
    """Each process's directory under /proc, its name as the kernel gives it, and the CPU time (user + system) it
    has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            head, tail = (proc / "stat").read_text().rsplit(")", 1)
        except OSError:  # gone meanwhile
            continue
        fields = tail.split()
        yield proc, head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick  # utime, stime (14 and 15)


def txlab_cpu_seconds(settings: Settings) -> float:
    """CPU time (user + system) used so far by every process of this installation: the services, the broker,
    the coordinator's replicas and admin (each runs `-m services.run` with this installation's
    TXLAB_DB_PREFIX). Not the load generator, not PostgreSQL or RabbitMQ."""
    mine = f"TXLAB_DB_PREFIX={settings.db_prefix}".encode()
    total = 0.0
    for proc, _, seconds in _cpu_by_process():
        try:
            if b"services.run" in (proc / "cmdline").read_bytes() and mine in (
                    proc / "environ").read_bytes().split(b"\0"):
                total += seconds
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return total


# the servers' processes, by the name the kernel gives them (/proc/<pid>/stat): PostgreSQL's postmaster and
# backends, RabbitMQ's Erlang VM and its helpers
SERVER_PROCESSES = {"postgres": "postgres", "beam.smp": "rabbitmq", "erl_child_setup": "rabbitmq",
                    "inet_gethost": "rabbitmq"}


def server_cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) used so far by the PostgreSQL and RabbitMQ processes this machine runs, whoever
    their user, by server. A server in a container or on another machine is not seen (0): its figure is
    unknown, not zero."""
    totals = {"postgres": 0.0, "rabbitmq": 0.0}
    for _, name, seconds in _cpu_by_process():
        server = SERVER_PROCESSES.get(name)
        if server is not None:
            totals[server] += seconds
    return totals


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat: busy is all but idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / tick, sum(values) / tick


@dataclass
class Row:
    """One pattern at one concurrency: what `--json` writes, one object per row."""

    pattern: str
    in_flight: int
    orders_per_s: float  # decided per second, from the first order's acceptance to the last decision
    placed_per_s: float  # POST /orders accepted per second
    pgbench_tps: float
    ratio: float  # orders/s ÷ pgbench tps
    post_p50_ms: float
    post_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    commits_per_order: float  # the services' and the broker's transactions, not the checker's nor the bench's
    messages_per_order: float
    cpu_ms_per_order: float  # summed over every txlab process
    placed: int
    refused: int  # POST /orders answered 429 (admission control), each retried after its Retry-After
    rejected: int  # POST /orders answered another 4xx
    invariants_hold: bool
    pg_cpu_ms_per_order: float = 0.0  # PostgreSQL's processes (0: not seen from here, e.g. in a container)
    mq_cpu_ms_per_order: float = 0.0  # RabbitMQ's
    busy_cores: float = 0.0  # how many of the machine's cores were busy, on average, during the run
    cores: int = 0


@dataclass
class _Mark:
    commits: int
    messages: int
    cpu: float
    checker: int
    servers: dict[str, float]
    machine: tuple[float, float]


def _mark(settings: Settings) -> _Mark:
    commits, messages = commits_and_messages(settings)
    return _Mark(commits, messages, txlab_cpu_seconds(settings), sum(checker.OWN_TRANSACTIONS.values()),
                 server_cpu_seconds(), machine_cpu_seconds())


def _row(pattern: str, c: int, tps: float, result: DemoResult, before: _Mark, after: _Mark) -> Row:
    # taken out: the checker's own transactions (the convergence polls) and the bench's reading of the counters
    # (one per database)
    commits = after.commits - before.commits - (after.checker - before.checker) - len(DATABASES)
    n = max(result.placed, 1)
    busy, total = (a - b for a, b in zip(after.machine, before.machine, strict=True))
    cores = os.cpu_count() or 1
    return Row(pattern, c, result.settled_per_s, result.throughput, tps, result.settled_per_s / tps,
               percentile(result.post_latencies, 50) * 1000, percentile(result.post_latencies, 99) * 1000,
               percentile(result.e2e_latencies, 50) * 1000, percentile(result.e2e_latencies, 99) * 1000,
               commits / n, (after.messages - before.messages) / n, (after.cpu - before.cpu) * 1000 / n,
               result.placed, result.refused, result.rejected,
               result.report is not None and result.report.exit_code == 0,
               (after.servers["postgres"] - before.servers["postgres"]) * 1000 / n,
               (after.servers["rabbitmq"] - before.servers["rabbitmq"]) * 1000 / n,
               busy / total * cores if total > 0 else 0.0, cores)


def run(prog: str, argv: list[str], patterns: list[str], reference: str = "", levels: tuple[int, ...] = (8, 32),
        doc: str | None = None) -> int:
    """Each pattern at each concurrency, with pgbench -N measured just before at the same concurrency.
    `reference` is printed under the table (a published figure to compare the ratio with)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc or __doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(levels))
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--patterns", nargs="+", default=patterns, choices=ALL_PATTERNS)
    parser.add_argument("--store", type=store_spec, default=None,
                        help="the coordinator's store: raft (default) or etcd://host:port")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file, as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="also draw orders/s and e2e p99 to this PNG")
    parser.add_argument("--compare", type=Path, default=None,
                        help="rows an earlier run wrote with --json: print each figure before → now")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 240))
    settings = get_settings()
    if args.store:
        settings = settings.model_copy(update={"coordinator_store": args.store})
    plan = SeedPlan(products=200, customers=1000, stock=100_000, scarce_share=0.02, poor_share=0.02)
    title = f"{' and '.join(args.patterns)} vs pgbench -N ({args.orders} orders per run, same PostgreSQL)"
    rows: list[Row] = []
    marks: list[_Mark] = []  # taken once each run's data is seeded
    for c in args.concurrency:
        console.print(f"[dim]pgbench -N -c {c} for {args.pgbench_seconds}s…[/dim]")
        tps = pgbench_tps(settings.pg, c, args.pgbench_seconds)
        for pattern in args.patterns:
            result = asyncio.run(run_demo(settings, orders=args.orders, concurrency=c, pattern=pattern, plan=plan,
                                          console=console, on_seeded=lambda: marks.append(_mark(settings)),
                                          on_converged=lambda: marks.append(_mark(settings))))
            for inv in (result.report.invariants if result.report else []):
                for violation in inv.violations[:5]:
                    console.print(f"[red]✗ {pattern} at {c} in flight: {inv.name.split(':')[0]}: {violation}[/red]")
            if not result.placed:
                console.print(f"[red]no {pattern} order was placed at {c} in flight[/red]")
                return 1
            rows.append(_row(pattern, c, tps, result, marks[-2], marks[-1]))
    console.print(render_rows(rows, title))
    console.print("orders/s counts orders decided, from the first acceptance to the last decision; placed/s how "
                  "fast POST /orders accepted them. "
                  "commits/order counts the transactions the service databases and the broker's committed during "
                  "the run (not the checker's); msgs/order the messages published with confirms (outbox rows, "
                  "half messages); CPU ms/order the user + system time of every txlab process; PG + MQ ms/order the "
                  "same for PostgreSQL's and RabbitMQ's processes on this machine (not seen when they run in a "
                  "container or elsewhere); busy cores how much of the machine was busy during the run, the load "
                  "generator included. When the cores are all busy, orders/s is what the CPU allows: txlab's, "
                  "PostgreSQL's and RabbitMQ's milliseconds per order together, into the cores' seconds")
    if reference:
        console.print(reference)
    if args.compare:
        console.print(render_comparison(load_rows(args.compare), rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        console.print(f"rows written to {args.json}")
    if args.plot:
        save(chart(rows, title), args.plot)
        console.print(f"chart written to {args.plot}")
    return 0 if all(r.invariants_hold for r in rows) else 1


def chart(rows: list[Row], title: str) -> Figure:
    """Orders/s and end-to-end p99 of each pattern, one bar per concurrency."""
    return figure(title, [
        Panel(rows, "pattern", {"orders_per_s": "orders/s"}, "orders decided/s", series="in_flight",
              series_name="{} in flight"),
        Panel(rows, "pattern", {"e2e_p99_ms": "e2e p99"}, "end-to-end p99 (ms)", series="in_flight",
              series_name="{} in flight")])


def render_rows(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for col in ("pattern", "in flight", "orders/s", "placed/s", "POST p50 / p99", "e2e p50 / p99", "commits/order",
                "msgs/order", "CPU ms/order", "PG + MQ ms/order", "busy cores", "refused", "pgbench -N tps",
                "orders/s ÷ tps", "invariants"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.pattern, str(r.in_flight), f"{r.orders_per_s:.1f}", f"{r.placed_per_s:.1f}",
                      f"{ms(r.post_p50_ms / 1000)} / {ms(r.post_p99_ms / 1000)}",
                      f"{ms(r.e2e_p50_ms / 1000)} / {ms(r.e2e_p99_ms / 1000)}", f"{r.commits_per_order:.1f}",
                      f"{r.messages_per_order:.1f}", f"{r.cpu_ms_per_order:.1f}", _servers(r),
                      f"{r.busy_cores:.1f} of {r.cores}" if r.cores else "–", str(r.refused),
                      f"{r.pgbench_tps:.0f}", f"{r.ratio:.4f}", "hold" if r.invariants_hold else "[red]VIOLATED[/red]")
    return table


def _servers(r: Row) -> str:
    if not r.pg_cpu_ms_per_order and not r.mq_cpu_ms_per_order:
        return "not seen"
    return f"{r.pg_cpu_ms_per_order:.1f} + {r.mq_cpu_ms_per_order:.1f}"


def load_rows(path: Path) -> list[Row]:
    """The rows a run wrote with --json (fields added since are left at zero)."""
    names = set(Row.__dataclass_fields__)
    return [Row(**({n: 0 for n in names} | {k: v for k, v in r.items() if k in names}))
            for r in json.loads(path.read_text())]


def render_comparison(before: list[Row], now: list[Row]) -> Table:
    """Each pattern and concurrency both runs measured: its figures before → now, and now ÷ before."""
    earlier = {(r.pattern, r.in_flight): r for r in before}
    table = Table(title="before → now (rows of the same pattern and concurrency)")
    for col in ("pattern", "in flight", "orders/s", "e2e p99", "CPU ms/order", "CPU now ÷ before",
                "orders/s ÷ tps"):
        table.add_column(col, justify="right")
    for r in now:
        b = earlier.get((r.pattern, r.in_flight))
        if b is None:
            continue
        cpu = r.cpu_ms_per_order / b.cpu_ms_per_order if b.cpu_ms_per_order else float("nan")
        table.add_row(r.pattern, str(r.in_flight), f"{b.orders_per_s:.1f} → {r.orders_per_s:.1f}",
                      f"{ms(b.e2e_p99_ms / 1000)} → {ms(r.e2e_p99_ms / 1000)}",
                      f"{b.cpu_ms_per_order:.1f} → {r.cpu_ms_per_order:.1f}", f"{cpu:.2f}",
                      f"{b.ratio:.4f} → {r.ratio:.4f}")
    return table
