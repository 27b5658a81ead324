"""`txlab raft up` supervises its nodes: one that exits is started again, unless its hold file keeps it down."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from raft.cluster import free_base_port, hold_file, pid_file
from tests.polling import eventually
from tests.raft_up import node_pid, node_status, raft_up


async def test_raft_up_restarts_a_killed_node_unless_it_is_held_and_stops_the_nodes_it_started(tmp_path):
    data_dir, base = tmp_path / "raft", free_base_port(3)
    with raft_up(data_dir, base, "kv-token", tmp_path / "up.log") as up:
        pids = await eventually(lambda: [node_pid(data_dir, i) for i in (1, 2, 3)] if all(
            node_status(base, i) and node_pid(data_dir, i) for i in (1, 2, 3)) else None, within=60.0,
            what="three nodes up, each with its pid file")

        # a second `raft up` over the running cluster is refused and touches nothing (it once crash-looped on the
        # cluster's ports, overwrote its pid files and opened its nodes' files)
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "raft.cli", "up", "--nodes", "3", "--base-port", str(base),
                             "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "TXLAB_ADMIN_TOKEN": "kv-token", "COLUMNS": "200"})
        assert second.returncode == 2 and "already in use" in second.stdout, second.stdout + second.stderr
        assert [node_pid(data_dir, i) for i in (1, 2, 3)] == pids

        os.kill(pids[0], signal.SIGKILL)
        restarted = await eventually(lambda: (pid := node_pid(data_dir, 1)) not in (None, pids[0]) and pid,
                                     within=30.0, what="node 1 restarted with a new pid")
        await eventually(lambda: node_status(base, 1), within=30.0, what="node 1 answering again")

        hold_file(data_dir, 1).touch()
        os.kill(restarted, signal.SIGKILL)
        await eventually(lambda: not pid_file(data_dir, 1).exists(), within=30.0, what="node 1's pid file gone")
        await asyncio.sleep(2.0)  # it would have been restarted by now: it is held down instead
        assert node_pid(data_dir, 1) is None and node_status(base, 1) is None
        assert up.poll() is None and [node_pid(data_dir, i) for i in (2, 3)] == pids[1:]

        hold_file(data_dir, 1).unlink()
        back = await eventually(lambda: node_status(base, 1) and node_pid(data_dir, 1), within=30.0,
                                what="node 1 back once its hold is removed")
        assert back not in (pids[0], restarted)
    assert up.returncode == 0
    assert not pid_file(data_dir, 2).exists()  # it forgets its control files once its nodes are stopped
