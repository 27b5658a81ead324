"""The `txlab` command line: one entry point for running, faulting, checking and measuring the system."""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn

import httpx
import psycopg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from services.checker import CannotCheck, run_checks
from services.common.db import migrate as run_migrations
from services.common.docs import first_paragraph
from services.common.faults import FaultSpecError, parse_spec
from services.common.settings import DATABASES, Settings, get_settings
from services.demo import fault_plan, render, render_report, run_demo
from services.order.placement import PATTERNS
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import PortInUse, Supervisor

app = typer.Typer(help="txlab: distributed consistency techniques, side by side, under real faults.",
                  no_args_is_help=True, add_completion=False)

# Benchmarks and scenarios live in their own modules; each exposes `main(argv: list[str]) -> int`.
BENCHES = {
    "outbox": "bench.outbox",
    "halfmsg": "bench.halfmsg",
    "tcc": "bench.tcc",
    "2pc": "bench.xa:two_phase",
    "3pc": "bench.xa:three_phase",
    "patterns": "bench.patterns",
    "failover": "bench.failover",
    "raft": "bench.raft",
    "hashring": "bench.hashring",
}
SCENARIOS = {
    "raft-election": "scenarios.raft:election",
    "raft-split-vote": "scenarios.raft:split_vote",
    "raft-partition": "scenarios.raft:partition",
    "master-slave-blocking": "scenarios.raft:master_slave_blocking",
    "hashring": "scenarios.hashring:main",
    "halfmsg-checkback": "scenarios.halfmsg:main",
    "tcc-empty-rollback": "scenarios.tcc:empty_rollback_main",
    "tcc-hanging": "scenarios.tcc:hanging_main",
    "coordinator-failover": "scenarios.tcc:failover_main",
    "2pc-coordinator-crash": "scenarios.xa:coordinator_crash_main",
    "3pc-partition": "scenarios.xa:partition_main",
}


def _listing(kind: str, entries: dict[str, str]) -> None:
    """`txlab bench --help` and `txlab scenario --help`: each name with the first paragraph of its docstring."""
    table = Table(title=f"txlab {kind} NAME [OPTIONS]   (txlab {kind} NAME --help: its options)", show_lines=True)
    table.add_column("NAME", no_wrap=True)
    table.add_column("what it does")
    for name, target in entries.items():
        module, func = _entry(target)
        text = first_paragraph(func.__doc__ if ":" in target and func.__doc__ else module.__doc__)
        table.add_row(name, text.replace(f"`txlab {kind} {name}`: ", ""))
    _console().print(table)


def _entry(target: str) -> tuple[ModuleType, Callable[[list[str]], int | None]]:
    """The module and the function that `module:function` (or `module`, for its `main`) names."""
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, func_name or "main")


def _run_entry(target: str, argv: list[str]) -> int:
    return int(_entry(target)[1](argv) or 0)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help=f"one of: {', '.join(BENCHES)}")) -> None:
    """Run a benchmark and print its table (extra options go to the benchmark; --help lists them)."""
    if name in ("--help", "-h", "help"):
        _listing("bench", BENCHES)
        return
    if name not in BENCHES:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
    raise typer.Exit(_run_entry(BENCHES[name], list(ctx.args)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def scenario(ctx: typer.Context,
             name: str = typer.Argument(..., help=f"one of: {', '.join(SCENARIOS)}")) -> None:
    """Reproduce one of the seed's claims on real processes, with narrated output (--help lists them)."""
    if name in ("--help", "-h", "help"):
        _listing("scenario", SCENARIOS)
        return
    if name not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    raise typer.Exit(_run_entry(SCENARIOS[name], list(ctx.args)))


def _console() -> Console:
    """A console as wide as the terminal, or wide enough for the tables when piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=150)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        _fail("invalid settings: " + "; ".join(e["msg"] for e in exc.errors()))


def _fail(message: str, code: int = 2) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def up() -> None:
    """Start every service as a child process; restart crashed ones; Ctrl-C stops them all."""
    settings = _settings()
    console = _console()

    async def run() -> None:
        async with Supervisor(settings) as sup:
            table = Table(title="txlab is up")
            table.add_column("process")
            table.add_column("url")
            table.add_column("pid", justify="right")
            for name, child in sup.children.items():
                table.add_row(name, sup.settings.url(name), str(child.pid))
            console.print(table)
            console.print(f"admin token: {sup.settings.admin_token}  (saved in {sup.settings.token_file})")
            console.print(f"dashboard: {sup.settings.url('admin')}/ui  (log in with the admin token)")
            console.print(f"logs: {sup.settings.log_dir}   Ctrl-C stops everything")
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await stop.wait()
            console.print("stopping…")

    try:
        asyncio.run(run())
    except (TimeoutError, PortInUse) as exc:
        _fail(str(exc))


@app.command()
def migrate() -> None:
    """Create the databases when missing and bring them to the newest schema."""
    settings = _settings()
    for service in DATABASES:
        try:
            run_migrations(settings, service)
        except psycopg.OperationalError as exc:
            _fail(f"cannot reach PostgreSQL ({exc}); run scripts/local-services")
        _console().print(f"{settings.database(service)}: at head")


@app.command()
def seed(products: int = typer.Option(50, min=1, max=100_000), customers: int = typer.Option(200, min=1),
         stock: int = typer.Option(500, min=0), balance_cents: int = typer.Option(500_000, min=0),
         rng_seed: int = typer.Option(42, "--seed")) -> None:
    """Empty the databases and create a reproducible catalogue and customer base."""
    plan = SeedPlan(products=products, customers=customers, stock=stock, balance_cents=balance_cents,
                    seed=rng_seed)
    try:
        n_products, n_customers = reset_and_seed(_settings(), plan)
    except psycopg.OperationalError as exc:
        _fail(f"cannot reach PostgreSQL ({exc}); run scripts/local-services")
    _console().print(f"seeded {n_products} products and {n_customers} customers (seed {rng_seed})")


@app.command()
def check(wait: float = typer.Option(30.0, min=0, help="seconds to wait for a quiet system (outages included) first"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Check the invariants; exit 0 when all hold, 1 on a violation, 2 when the system cannot be checked."""
    told: list[str] = []

    def tell(_: dict[str, int] | None, down: CannotCheck | None) -> None:
        if down is not None and not told:  # once: a server is down, and how long we wait for it
            told.append(str(down))
            Console(stderr=True).print(f"[yellow]waiting up to {wait:.0f}s (--wait) for: {down}[/yellow]")

    try:
        report = run_checks(_settings(), wait, tell)
    except CannotCheck as exc:
        _fail(f"cannot check: {exc}", 2)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render_report(report, _console())
    raise typer.Exit(report.exit_code)


@app.command()
def demo(pattern: str = typer.Option("outbox"), orders: int = typer.Option(200, min=1, max=100_000),
         concurrency: int = typer.Option(16, min=1, max=512),
         faults: list[str] = typer.Option(["none"], help="none | random | point=action[:ms][,times=N][,p=P]"),
         converge_timeout: float = typer.Option(300.0, help="seconds to wait for the system to converge, "
                                                "outages of RabbitMQ or PostgreSQL included")) -> None:
    """Run the e-commerce scenario (starting the system when it is not running) and print the results. The shop is
    reseeded first (as `txlab seed` does): what was loaded before is replaced."""
    console = _console()
    console.print(f"[dim]orders are retried and convergence awaited for up to {converge_timeout:.0f}s, "
                  "through outages of RabbitMQ or PostgreSQL[/dim]")
    if pattern not in PATTERNS:
        _fail(f"pattern {pattern!r} is not available; choose one of: {', '.join(PATTERNS)}")
    try:
        plan = fault_plan(faults, pattern)
    except FaultSpecError as exc:
        _fail(str(exc))
    try:
        result = asyncio.run(run_demo(_settings(), orders=orders, concurrency=concurrency, pattern=pattern,
                                      faults=plan, converge_timeout=converge_timeout, console=console))
    except (TimeoutError, psycopg.OperationalError, CannotCheck, PortInUse) as exc:
        _fail(str(exc))
    render(result, console)
    raise typer.Exit(result.report.exit_code if result.report else 2)


fault_app = typer.Typer(help="Arm, list and clear fault points through the admin API.", no_args_is_help=True)
app.add_typer(fault_app, name="fault")


def _admin(method: str, path: str, **kwargs: Any) -> Any:
    settings = _settings()
    try:
        r = httpx.request(method, f"{settings.url('admin')}{path}", timeout=10.0,
                          headers={"authorization": f"Bearer {settings.admin_token}"}, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"admin API at {settings.url('admin')} is unreachable ({exc.__class__.__name__}); is `txlab up` running?")
    if r.status_code >= 400:  # refused (4xx) is the caller's input, as a spec that does not parse: exit 2
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        _fail(f"{r.status_code}: {detail}", 2 if r.status_code < 500 else 1)
    return r.json()


@fault_app.command("arm")
def fault_arm(specs: list[str] = typer.Argument(..., help="point=action[:ms][,times=N][,p=P]"),
              service: str | None = typer.Option(None, help="only in this service")) -> None:
    """Arm fault points, e.g. `txlab fault arm relay.after_publish=crash,times=1`."""
    for spec in specs:
        try:
            arming = parse_spec(spec)
        except FaultSpecError as exc:
            _fail(str(exc))
        armed = _admin("POST", "/faults", json=arming.request() | {"service": service})
        _console().print(f"armed {spec} in {', '.join(a['service'] for a in armed)}")


@fault_app.command("list")
def fault_list() -> None:
    """The armed faults and how often each fired, in all (what `times` limits) and per service."""
    table = Table("point", "action", "times", "probability", "fired", "per service")
    for a in _admin("GET", "/faults"):
        action = f"delay:{a['delay_ms']}" if a["action"] == "delay" else a["action"]
        per_service = ", ".join(f"{service} {n}" for service, n in a["services"].items())
        table.add_row(a["point"], action, str(a["times"] or "∞"), str(a["probability"]), str(a["fired"]),
                      per_service)
    _console().print(table)


@fault_app.command("points")
def fault_points() -> None:
    """Every fault point that exists."""
    table = Table("point", "actions", "services", "where")
    for p in _admin("GET", "/faults/points"):
        table.add_row(p["name"], ", ".join(p["actions"]), ", ".join(p["services"]), p["description"])
    _console().print(table)


@fault_app.command("clear")
def fault_clear(point: str | None = typer.Argument(None)) -> None:
    """Disarm one point, or all."""
    _admin("DELETE", "/faults", params={"point": point} if point else {})
    _console().print(f"disarmed {point or 'all'}")


def _mount_optional(module_name: str, name: str) -> None:
    """Mount a sub-application (`app` in module_name) when that package is present."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return
        raise
    app.add_typer(module.app, name=name)


_mount_optional("raft.cli", "raft")


def main() -> None:
    app(prog_name="txlab")


if __name__ == "__main__":
    sys.exit(main())
