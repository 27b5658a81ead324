"""`txlab scenario hashring` runs end to end against the real cache nodes, small."""

from __future__ import annotations

import os
import re

import pytest

from scenarios import hashring as scenario


def test_scenario_adds_and_removes_a_node_under_load_and_serves_nothing_stale(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = scenario.main(["--keys", "400", "--workers", "4", "--window", "0.3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 stale values served" in out
    assert "Keys moved by each ring change" in out and "hit ratio" in out
    pid = int(re.search(r"Stopped the fourth redis-server \(pid (\d+)\)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the fourth node it started is gone
