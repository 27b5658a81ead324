"""`txlab bench failover`: kill -9 the coordinator's leader again and again under a TCC load, and measure how
long the transactions in flight wait before they make progress again, and how many are lost (must be 0).

A system of its own is started (its own databases, queues, ports and coordinator group), so that the bench
kills only processes it started. A steady load of tcc orders runs throughout; for each kill the bench
measures:
- the election: from the kill until a replica leads and has caught up;
- the resumption: from the kill until the first transaction makes a step again (a Try, Confirm, Cancel or
  report recorded by the new leader).
After the last kill the load stops, the system converges, and `txlab check` runs; a transaction is lost if
its order was accepted (201) and is not PAID or CANCELLED, or disagrees with its transaction.
`--json FILE` writes the table's rows and the counts; `--plot FILE.png` draws p50, p99 and max of each measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.plot import Panel, figure, save
from scenarios.own import own_settings
from services.checker import run_checks
from services.common.docs import first_paragraph
from services.coordinator.client import leading_replica
from services.coordinator.store import store_spec
from services.demo import Client, e2e_latencies, order_bodies, percentile, render_report
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import Supervisor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLAN = SeedPlan(products=100, customers=500, stock=100_000, scarce_share=0.02, poor_share=0.02)


async def _leader(settings, http: httpx.AsyncClient, after_term: int | None = None) -> tuple[int, int, float]:
    """(node, term, time) once a replica leads and has caught up, in a term after `after_term` when given."""
    status = await leading_replica(settings, http, after_term, within=120.0)
    return status["id"], status["term"], time.monotonic()


async def _progress_after(settings, http: httpx.AsyncClient, since_wall: float) -> float:
    """The monotonic time at which some transaction recorded a step after `since_wall` (wall clock)."""
    headers = {"authorization": f"Bearer {settings.admin_token}"}
    give_up = time.monotonic() + 60.0
    while time.monotonic() < give_up:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            page = (await http.get(f"{settings.url('admin')}/transactions", params={"limit": 50},
                                   headers=headers, timeout=2.0)).json()
            if any(item["updated"] > since_wall and item["created"] < since_wall for item in page["items"]):
                return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError("no transaction in flight at the kill made progress within 60 s")


def measure(name: str, seconds: list[float]) -> dict[str, Any]:
    """One row of the table: p50, p99 and max of `seconds`, in ms (NaN when nothing was measured)."""
    return {"measure": name, "p50_ms": percentile(seconds, 50) * 1000, "p99_ms": percentile(seconds, 99) * 1000,
            "max_ms": max(seconds) * 1000 if seconds else math.nan}


def chart(rows: list[dict[str, Any]], title: str) -> Figure:
    """p50, p99 and max of each measure, side by side."""
    return figure(title, [Panel(rows, "measure", {"p50_ms": "p50", "p99_ms": "p99", "max_ms": "max"},
                                "time after the kill (ms, log)", log=True)])


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f} ms"


async def _run(settings, kills: int, concurrency: int, console: Console) -> tuple[int, str, dict[str, Any]]:
    """The exit code, the table's title, and its rows with the counts (what `--json` writes)."""
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    rows: list[tuple[float, float]] = []
    accepted: list[str] = []
    async with Supervisor(settings) as sup, httpx.AsyncClient() as http:
        client = Client(settings, retry_for=120.0)
        stop = asyncio.Event()
        bodies = iter(order_bodies(PLAN, 1_000_000, "tcc", seed=3))

        async def load() -> None:
            while not stop.is_set():
                status, answer = await client.place(next(bodies))
                if status in (200, 201, 202):
                    accepted.append(answer["id"])

        workers = [asyncio.create_task(load()) for _ in range(concurrency)]
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"kill -9 of the leader, {kills} times", total=kills)
                for _ in range(kills):
                    victim, term, _ = await _leader(settings, http)
                    await asyncio.sleep(1.0)  # under load for a while
                    wall, t_kill = time.time(), time.monotonic()
                    await sup.kill(f"coordinator-{victim}")
                    (*_, t_elected), t_progress = await asyncio.gather(_leader(settings, http, after_term=term),
                                                                       _progress_after(settings, http, wall))
                    rows.append((t_elected - t_kill, t_progress - t_kill))
                    await sup.wait_healthy(60)  # the victim is back, as a follower
                    progress.advance(task)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            await client.aclose()
        report = await asyncio.to_thread(run_checks, settings, 120.0)
        statuses, latencies, _ = await asyncio.to_thread(e2e_latencies, settings)
    elected, resumed = [r[0] for r in rows], [r[1] for r in rows]
    lost = statuses.get("PENDING", 0)
    title = (f"coordinator failover: {kills} × kill -9 of the leader under a tcc load "
             f"({concurrency} in flight, store {settings.coordinator_store})")
    measures = [measure("new leader elected and caught up", elected),
                measure("transactions progress again", resumed),
                measure("order end-to-end (accepted → final)", latencies)]
    table = Table(title=title)
    for col in ("measure", "p50", "p99", "max"):
        table.add_column(col, justify="right")
    for r in measures:
        table.add_row(r["measure"], _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["max_ms"]))
    console.print(table)
    console.print(f"orders accepted: {len(accepted)} ({statuses.get('PAID', 0)} PAID, "
                  f"{statuses.get('CANCELLED', 0)} CANCELLED); transactions lost: [bold]{lost}[/bold]")
    render_report(report, console)
    summary = {"measures": measures, "accepted": len(accepted), "paid": statuses.get("PAID", 0),
               "cancelled": statuses.get("CANCELLED", 0), "lost": lost}
    return (0 if lost == 0 and report.exit_code == 0 else 1), title, summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="txlab bench failover", description=first_paragraph(__doc__))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--store", type=store_spec, default="raft",
                        help="the coordinator's store: raft, or etcd://host:port")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file, as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="also draw p50/p99/max of each measure to this PNG")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    with own_settings("failover", coordinator_store=args.store) as settings:
        code, title, summary = asyncio.run(_run(settings, args.kills, args.concurrency, console))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"rows written to {args.json}")
    if args.plot:
        save(chart(summary["measures"], f"{title}; {summary['lost']} transactions lost"), args.plot)
        console.print(f"chart written to {args.plot}")
    return code
