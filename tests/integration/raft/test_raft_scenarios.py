"""Each `txlab scenario` for Raft observes its claim on real processes (exit code 0)."""

from __future__ import annotations

import pytest

from raft.cluster import free_base_port
from scenarios import raft as raft_scenarios


@pytest.mark.parametrize("name", ["election", "split_vote", "partition", "master_slave_blocking"])
def test_scenario_observes_its_claim(name, tmp_path):
    run = getattr(raft_scenarios, name)
    assert run(["--base-port", str(free_base_port(5)), "--data-dir", str(tmp_path)]) == 0
