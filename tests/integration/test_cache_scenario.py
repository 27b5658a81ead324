"""`txlab scenario hashring` runs end to end against the real cache nodes, small."""

from __future__ import annotations

import subprocess

from services.cache import scenario


def _redis_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "redis-server"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_scenario_adds_and_removes_a_node_under_load_and_serves_nothing_stale(capsys) -> None:
    before = _redis_pids()
    code = scenario.main(["--keys", "400", "--workers", "4", "--window", "0.3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 stale values served" in out
    assert "Keys moved by each ring change" in out and "hit ratio" in out
    assert _redis_pids() <= before, "the fourth redis-server must be stopped"
