"""Each `txlab scenario` for Raft observes its claim on real processes (exit code 0)."""

from __future__ import annotations

import pytest

from raft import scenarios
from raft.cluster import free_base_port


@pytest.mark.parametrize("name", ["election", "split_vote", "partition", "master_slave_blocking"])
def test_scenario_observes_its_claim(name, tmp_path):
    run = getattr(scenarios, name)
    assert run(["--base-port", str(free_base_port(5)), "--data-dir", str(tmp_path)]) == 0
