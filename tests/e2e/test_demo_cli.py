"""`txlab demo` as a user runs it: it starts its own system, injects random faults, prints the result
table with the invariants, stops what it started, and exits 0 only when the invariants hold."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.supervisor import all_processes, run_dir
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


def test_sigterm_stops_the_demo_and_every_process_it_started(own_settings):
    """The services run in sessions of their own (a terminal's Ctrl-C reaches the demo alone, which stops them in
    order); a SIGTERM to the demo must stop them too, not leave them running and holding their ports."""
    env = os.environ | own_settings.child_env()
    demo = subprocess.Popen([sys.executable, "-m", "services.cli", "demo", "--orders", "100000", "--concurrency", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        pids: dict[str, int] = {}
        while len(pids) < len(all_processes(own_settings)) or not _answers(own_settings.port("order")):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo did not start its services"
            pids = {f.stem: int(f.read_text()) for f in run_dir(own_settings).glob("*.pid")}
            time.sleep(0.2)
        time.sleep(2.0)  # placing orders now
        demo.send_signal(signal.SIGTERM)
        out, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out, out
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) is still running after the demo was terminated"
    for service in ("order", "inventory", "payment", "admin"):
        assert not _answers(own_settings.port(service)), f"the demo left {service} running"


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
