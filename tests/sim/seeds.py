"""Running many simulation seeds at once, on every core."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable

import pytest


def _completed(run: Callable, seed: int, profile: dict) -> tuple[int, int, str | None]:
    """(seed, ops answered, the failure if a property was violated): runs in a worker process."""
    try:
        return seed, run(seed, **profile).completed, None
    except AssertionError as exc:
        return seed, 0, str(exc)


def run_all(run: Callable, seeds: range | list[int], selector: str, **profile: object) -> int:
    """Run the seeds on every core (each run is deterministic, wherever it runs); on a violated property,
    fail with the lowest failing seed and the command that replays exactly that run. Returns the ops
    answered in all."""
    workers = min(os.cpu_count() or 1, len(seeds)) or 1
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            outcomes = list(pool.map(_completed, [run] * len(seeds), seeds, [profile] * len(seeds), chunksize=4))
    else:
        outcomes = [_completed(run, seed, profile) for seed in seeds]
    failed = [(seed, msg) for seed, _, msg in outcomes if msg is not None]
    if failed:
        seed, msg = failed[0]
        pytest.fail(f"{msg}\nreplay: TXLAB_SIM_SEED={seed} pytest tests/sim -k {selector}", pytrace=False)
    return sum(done for _, done, _ in outcomes)
