"""`txlab raft up` as a real process of a test's own, stopped by its pid with SIGINT (as Ctrl-C would)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from raft.cluster import pid_file


@contextlib.contextmanager
def raft_up(data_dir: Path, base_port: int, token: str, log: Path, nodes: int = 3) -> Iterator[subprocess.Popen]:
    """Run `txlab raft up` on `base_port` with its files under `data_dir`; afterwards, every node it started is
    gone (it stops exactly those)."""
    env = {**os.environ, "TXLAB_ADMIN_TOKEN": token, "TXLAB_DATA_DIR": str(data_dir.parent)}
    with open(log, "ab") as out:
        up = subprocess.Popen([sys.executable, "-m", "raft.cli", "up", "--nodes", str(nodes), "--base-port",
                               str(base_port), "--data-dir", str(data_dir)], stdout=out, stderr=out, env=env)
    try:
        yield up
    finally:
        started = {pid for i in range(1, nodes + 1) if (pid := node_pid(data_dir, i))}
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        for pid in started:  # a node left behind would be a bug: fail, but end it first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"`txlab raft up` left its node (pid {pid}) running")


def node_pid(data_dir: Path, i: int) -> int | None:
    """The pid `txlab raft up` wrote for node i, None while there is none."""
    try:
        return int(pid_file(data_dir, i).read_text())
    except (OSError, ValueError):
        return None


def node_status(base_port: int, i: int) -> dict | None:
    """Node i's GET /raft/status, None while it does not answer."""
    try:
        r = httpx.get(f"http://127.0.0.1:{base_port + i - 1}/raft/status", timeout=1.0)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None
