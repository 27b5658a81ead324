"""Seeded random fault runs: after every step the five safety properties hold, KV histories are linearizable,
and the cluster converges once faults heal.

TXLAB_SIM_SEEDS sets how many seeds run (default 2000; `make sim` runs 20000), plus an eighth of that again
with forced membership changes, a quarter with the crash-heavy profile and a fortieth as long runs.
A failure names its seed and the command that replays exactly that run, e.g.
`TXLAB_SIM_SEED=<seed> pytest tests/sim -k random`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import pytest

from raft.testing.sim import run_seed

CHUNKS = 8


def _seeds(chunk: int) -> range:
    one = os.environ.get("TXLAB_SIM_SEED")
    if one is not None:
        return range(int(one), int(one) + 1) if chunk == 0 else range(0)
    total = int(os.environ.get("TXLAB_SIM_SEEDS", "2000"))
    per = -(-total // CHUNKS)
    return range(chunk * per, min(total, (chunk + 1) * per))


def _completed(seed: int, profile: dict) -> tuple[int, int, str | None]:
    """(seed, ops answered, the failure if a property was violated): runs in a worker process."""
    try:
        return seed, run_seed(seed, **profile).completed, None
    except AssertionError as exc:
        return seed, 0, str(exc)


def _run_all(seeds: range | list[int], selector: str, **profile: object) -> int:
    """Run the seeds on every core (each run is deterministic, wherever it runs); on a violated property,
    fail with the lowest failing seed and the command that replays exactly that run. Returns the ops
    answered in all."""
    workers = min(os.cpu_count() or 1, len(seeds)) or 1
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            outcomes = list(pool.map(_completed, seeds, [profile] * len(seeds), chunksize=8))
    else:
        outcomes = [_completed(seed, profile) for seed in seeds]
    failed = [(seed, msg) for seed, _, msg in outcomes if msg is not None]
    if failed:
        seed, msg = failed[0]
        pytest.fail(f"{msg}\nreplay: TXLAB_SIM_SEED={seed} pytest tests/sim -k {selector}", pytrace=False)
    return sum(done for _, done, _ in outcomes)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_faults_keep_raft_safe_and_kv_linearizable(chunk: int) -> None:
    seeds = _seeds(chunk)
    if not seeds:
        pytest.skip("TXLAB_SIM_SEED replays a single seed in chunk 0")
    completed = _run_all(seeds, "random")
    assert completed > 0  # the clients got answers: the runs did real work


def _extra_seeds(share: int) -> range | list[int]:
    one = os.environ.get("TXLAB_SIM_SEED")
    return [int(one)] if one is not None else range(int(os.environ.get("TXLAB_SIM_SEEDS", "2000")) // share)


def test_random_membership_changes_keep_raft_safe() -> None:
    """Thesis §4.1 under faults: one in eight seeds again, every one with adds, removes and brand-new nodes."""
    assert _run_all(_extra_seeds(8), "membership", membership=True) > 0


def test_random_crashes_mid_write_keep_raft_safe() -> None:
    """Figure 2's persistence rules under stress: slow fsyncs and frequent crashes, many tearing a write."""
    assert _run_all(_extra_seeds(4), "crashes", crashy=True) > 0


def test_random_long_runs_keep_raft_safe() -> None:
    """Deeper states: one in forty seeds again with runs almost four times as long."""
    assert _run_all(_extra_seeds(40), "long", ticks=1500) > 0


def test_a_seed_replays_exactly() -> None:
    """Determinism: the same seed yields the same run, message for message."""
    a, b = run_seed(12345), run_seed(12345)
    assert a == b
    assert a.messages > 0 and a.completed > 0
