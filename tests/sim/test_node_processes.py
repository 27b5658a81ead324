"""raft/node.py itself under simulated faults: three RaftNode processes on virtual time, a faulty network
and simulated disks (see raft/testing/nodesim.py). Crashes strike at any disk operation, snapshots are taken
beside the Ready loop, and a stopped node may find a bit of its log flipped.

TXLAB_SIM_SEEDS / 20 seeds run (100 by default); `TXLAB_SIM_SEED=<seed> pytest tests/sim -k node` replays one.
"""

from __future__ import annotations

import os

import raft.storage
from raft.testing.nodesim import run_node_seed
from tests.sim.seeds import run_all


def _node_seeds() -> range | list[int]:
    one = os.environ.get("TXLAB_SIM_SEED")
    return [int(one)] if one is not None else range(int(os.environ.get("TXLAB_SIM_SEEDS", "2000")) // 20)


def test_node_processes_under_faults_stay_safe_linearizable_and_converge() -> None:
    assert run_all(run_node_seed, _node_seeds(), "node") > 0


def test_the_runs_exercise_crashes_snapshots_and_bit_rot() -> None:
    """The faults the runs claim do happen: nodes crash and restart, snapshots are taken, corrupt logs are
    refused, and clients get answers."""
    reports = [run_node_seed(seed) for seed in range(12)]
    assert sum(r.crashes for r in reports) > 0 and sum(r.restarts for r in reports) > 0
    assert any(r.snapshots > 0 for r in reports)
    assert any(r.retired for r in reports)
    assert all(r.completed > 0 for r in reports)


def test_a_node_seed_replays_exactly() -> None:
    assert run_node_seed(7) == run_node_seed(7)


def test_a_node_that_acknowledges_before_its_write_is_durable_is_caught(monkeypatch) -> None:
    """Figure 2's rule for a node process: persist, then answer. A node whose writes never reach the disk
    before it acknowledges loses entries it counted toward a commit when it crashes; first caught at seed 0:
    "State Machine Safety: node 2 applied (1, 2), another node applied term 1 there"."""
    real_save = raft.storage.Storage.save
    monkeypatch.setattr(raft.storage.Storage, "save",
                        lambda self, hard, entries, snapshot, sync: real_save(self, hard, entries, snapshot, False))
    for seed in range(20):
        try:
            run_node_seed(seed)
        except AssertionError as exc:
            assert "Safety" in str(exc) or "linearizable" in str(exc), exc
            return
    raise AssertionError("no seed out of 20 caught a node that never syncs")
