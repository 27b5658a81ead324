"""The operator's commands against a running system: `txlab fault ...` and `txlab bench outbox`."""

import json
import os
import subprocess
import sys

from tests.conftest import destroy, isolated_settings


def txlab(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=os.environ | settings.child_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_fault_commands_arm_list_and_clear_through_the_admin_api(settings, system):
    points = txlab(settings, "fault", "points")
    assert points.returncode == 0 and "relay.after_publish" in points.stdout and "bus.deliver" in points.stdout
    armed = txlab(settings, "fault", "arm", "relay.after_publish=delay:5,times=3", "--service", "payment")
    assert armed.returncode == 0 and "in payment" in armed.stdout
    listed = txlab(settings, "fault", "list")
    assert "relay.after_publish" in listed.stdout and "delay:5" in listed.stdout
    refused = txlab(settings, "fault", "arm", "relay.after_publish=explode")
    assert refused.returncode == 2 and "supports" in refused.stderr
    unknown = txlab(settings, "fault", "clear", "nosuch.point")  # refused by the API: the caller's input, as above
    assert unknown.returncode == 2 and "nosuch.point" in unknown.stderr, unknown.stderr
    cleared = txlab(settings, "fault", "clear")
    assert cleared.returncode == 0
    assert "relay.after_publish" not in txlab(settings, "fault", "list").stdout


def test_fault_command_says_when_the_admin_api_is_down(settings):
    down = settings.model_copy(update={"admin_port": 9})
    result = txlab(down, "fault", "list")
    assert result.returncode == 2 and "unreachable" in result.stderr


def test_bench_outbox_prints_its_table_next_to_pgbench_and_writes_json_and_a_chart(servers, tmp_path):
    own = isolated_settings(servers, tmp_path)
    rows, chart = tmp_path / "rows.json", tmp_path / "chart.png"
    try:
        result = txlab(own, "bench", "outbox", "--orders", "30", "--concurrency", "4", "--pgbench-seconds", "1",
                       "--json", str(rows), "--plot", str(chart), timeout=300)
    finally:
        destroy(own)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pgbench -N tps" in result.stdout and "hold" in result.stdout
    (row,) = json.loads(rows.read_text())
    assert (row["pattern"], row["in_flight"], row["placed"], row["refused"], row["invariants_hold"]) == \
        ("outbox", 4, 30, 0, True)
    assert row["orders_per_s"] > 0 and row["pgbench_tps"] > 0 and row["cpu_ms_per_order"] > 0
    assert 0 < row["commits_per_order"] < 40  # the services' own, not the checker's polls
    assert chart.read_bytes()[:4] == b"\x89PNG"
