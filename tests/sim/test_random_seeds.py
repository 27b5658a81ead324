"""Seeded random fault runs: after every step the five safety properties hold, KV histories are linearizable,
and the cluster converges once faults heal.

TXLAB_SIM_SEEDS sets how many seeds run (default 2000; `make sim` runs 20000), plus an eighth of that again
with forced membership changes, a quarter with the crash-heavy profile and a fortieth as long runs.
A failure names its seed and the command that replays exactly that run, e.g.
`TXLAB_SIM_SEED=<seed> pytest tests/sim -k random`.
"""

from __future__ import annotations

import os

import pytest

from raft.testing.sim import run_seed
from tests.sim.seeds import run_all

CHUNKS = 8


def _seeds(chunk: int) -> range:
    one = os.environ.get("TXLAB_SIM_SEED")
    if one is not None:
        return range(int(one), int(one) + 1) if chunk == 0 else range(0)
    total = int(os.environ.get("TXLAB_SIM_SEEDS", "2000"))
    per = -(-total // CHUNKS)
    return range(chunk * per, min(total, (chunk + 1) * per))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_faults_keep_raft_safe_and_kv_linearizable(chunk: int) -> None:
    seeds = _seeds(chunk)
    if not seeds:
        pytest.skip("TXLAB_SIM_SEED replays a single seed in chunk 0")
    completed = run_all(run_seed, seeds, "random")
    assert completed > 0  # the clients got answers: the runs did real work


def _extra_seeds(share: int) -> range | list[int]:
    one = os.environ.get("TXLAB_SIM_SEED")
    return [int(one)] if one is not None else range(int(os.environ.get("TXLAB_SIM_SEEDS", "2000")) // share)


def test_random_membership_changes_keep_raft_safe() -> None:
    """Thesis §4.1 under faults: one in eight seeds again, every one with adds, removes and brand-new nodes."""
    assert run_all(run_seed, _extra_seeds(8), "membership", membership=True) > 0


def test_random_crashes_mid_write_keep_raft_safe() -> None:
    """Figure 2's persistence rules under stress: slow fsyncs and frequent crashes, many tearing a write."""
    assert run_all(run_seed, _extra_seeds(4), "crashes", crashy=True) > 0


def test_random_long_runs_keep_raft_safe() -> None:
    """Deeper states: one in forty seeds again with runs almost four times as long."""
    assert run_all(run_seed, _extra_seeds(40), "long", ticks=1500) > 0


def test_a_seed_replays_exactly() -> None:
    """Determinism: the same seed yields the same run, message for message."""
    a, b = run_seed(12345), run_seed(12345)
    assert a == b
    assert a.messages > 0 and a.completed > 0
