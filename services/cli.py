"""The `txlab` command line: one entry point for running, faulting, checking and measuring the system."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(help="txlab: distributed consistency techniques, side by side, under real faults.",
                  no_args_is_help=True, add_completion=False)

# Benchmarks and scenarios live in their own modules; each exposes `main(argv: list[str]) -> int`.
BENCHES = {
    "outbox": "bench.outbox",
    "raft": "bench.raft",
    "hashring": "bench.hashring",
}
SCENARIOS = {
    "raft-election": "raft.scenarios:election",
    "raft-split-vote": "raft.scenarios:split_vote",
    "raft-partition": "raft.scenarios:partition",
    "master-slave-blocking": "raft.scenarios:master_slave_blocking",
    "hashring": "services.cache.scenario:main",
}


def _run_entry(target: str, argv: list[str]) -> int:
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, func_name or "main")(argv) or 0)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help=f"one of: {', '.join(BENCHES)}")) -> None:
    """Run a benchmark and print its table (extra options go to the benchmark)."""
    if name not in BENCHES:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
    raise typer.Exit(_run_entry(BENCHES[name], list(ctx.args)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def scenario(ctx: typer.Context,
             name: str = typer.Argument(..., help=f"one of: {', '.join(SCENARIOS)}")) -> None:
    """Reproduce one of the seed's claims on real processes, with narrated output."""
    if name not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    raise typer.Exit(_run_entry(SCENARIOS[name], list(ctx.args)))


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
