"""`txlab demo` as a user runs it: it starts its own system, injects random faults, prints the result
table with the invariants, stops what it started, and exits 0 only when the invariants hold."""

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import destroy, isolated_settings


@pytest.fixture
def own_settings(servers, tmp_path):
    s = isolated_settings(servers, tmp_path)
    yield s
    destroy(s)


def test_demo_starts_the_system_runs_under_random_faults_and_prints_the_table(own_settings):
    env = os.environ | own_settings.child_env()
    result = subprocess.run([sys.executable, "-m", "services.cli", "demo", "--orders", "40", "--concurrency", "8",
                             "--faults", "random"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("orders placed", "throughput", "end-to-end p50 / p99", "faults fired", "invariants"):
        assert row in result.stdout
    assert "│ orders placed" in result.stdout and "40 │" in result.stdout
    assert "NO (" not in result.stdout
    for service in ("order", "inventory", "payment", "admin"):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", own_settings.port(service))) != 0, f"the demo left {service} running"
