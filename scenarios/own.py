"""A system of a scenario's own: its databases, queues, ports and data dir, dropped when the scenario ends, so
that a scenario never touches a running txlab (nor its coordinator's records)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
from rich.console import Console
from rich.table import Table

from raft.cluster import free_base_port
from services.checker import Report
from services.common.db import drop_database
from services.common.settings import DATABASES, Settings
from services.messaging.parking import delete_topology
from services.messaging.topology import topology_of

Claim = tuple[str, str, bool]  # a case, what is claimed for it, whether that was observed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario_settings(data_dir: Path, **overrides: Any) -> Settings:
    tag = f"scn{uuid.uuid4().hex[:6]}"
    coordinator = free_base_port(3)
    return Settings(**{"db_prefix": f"txlab_{tag}", "bus_prefix": f"{tag}.", "cache_prefix": f"{tag}:cache:",
                       "data_dir": data_dir, "admin_port": free_port(), "order_port": free_port(),
                       "inventory_port": free_port(), "payment_port": free_port(), "broker_port": free_port(),
                       "coordinator_port": coordinator, "coordinator_raft_port": coordinator + 100} | overrides)


@contextlib.contextmanager
def own_settings(prefix: str, **overrides: Any) -> Iterator[Settings]:
    """Settings of a system of its own, and its databases and queues dropped afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"txlab-{prefix}-") as tmp:
        settings = scenario_settings(Path(tmp), **overrides)
        try:
            yield settings
        finally:
            for database in DATABASES:
                drop_database(settings, database)
            with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError):
                asyncio.run(delete_topology(settings.amqp, topology_of(settings)))  # its own queues


def verdict(observed: list[Claim], report: Report, console: Console, title: str, case: str = "case",
            broken: tuple[str, ...] = ()) -> int:
    """Print the claims beside what was observed, and the invariants; 0 when every claim held and they hold
    (or, for a scenario that breaks some on purpose, when exactly those named by the prefixes `broken` fail)."""
    from services.demo import render_report

    table = Table(title=title)
    for col in (case, "claim", "observed"):
        table.add_column(col)
    for what, claim, ok in observed:
        table.add_row(what, claim, "[green]yes[/green]" if ok else "[red]no[/red]")
    console.print(table)
    render_report(report, console)
    failed = [i.name for i in report.invariants if not i.holds]
    invariants_as_claimed = (all(any(name.startswith(b) for b in broken) for name in failed)
                             and all(any(name.startswith(b) for name in failed) for b in broken))
    return 0 if all(ok for *_, ok in observed) and invariants_as_claimed else 1
