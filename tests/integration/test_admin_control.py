"""Admin's hand on the supervisors' children (services/admin/control.py), on stand-in processes of this test's
own: a kill holds the child down until a release, and a pid file naming any other process is never signalled."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services.admin.control import ControlRefused, is_held, kill_and_hold, kv_node, release, replica, running_pid
from services.common.settings import Settings
from services.supervisor import hold_file, pid_file


def shown(probe, within: float = 10.0):
    """The probe's first truthy answer: the kernel shows a new process's command line once its exec is through."""
    deadline = time.monotonic() + within
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_kill_holds_a_supervised_child_down_and_release_lets_it_start(tmp_path):
    settings = Settings(admin_token="t", data_dir=tmp_path)
    name = "coordinator-1"
    child = replica(settings, name)
    with pytest.raises(ControlRefused, match="not running under a txlab supervisor"):
        kill_and_hold(child)
    # a stand-in child with the command line the supervisor gives its children
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "services.run", name])
    try:
        pid_file(settings, name).parent.mkdir(parents=True)
        pid_file(settings, name).write_text(str(process.pid))
        assert shown(lambda: running_pid(child)) == process.pid
        assert kill_and_hold(child) == process.pid
        assert process.wait(10) == -9 and is_held(child)
        with pytest.raises(ControlRefused, match="already down"):
            kill_and_hold(child)
        assert release(child) == "released" and not hold_file(settings, name).exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_stale_pid_file_naming_another_process_is_never_signalled(tmp_path):
    settings = Settings(admin_token="t", data_dir=tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file(settings, "coordinator-2").parent.mkdir(parents=True)
        pid_file(settings, "coordinator-2").write_text(str(other.pid))
        with pytest.raises(ControlRefused):
            kill_and_hold(replica(settings, "coordinator-2"))
        assert other.poll() is None and not is_held(replica(settings, "coordinator-2"))
    finally:
        other.kill()
        other.wait()


def test_a_kv_node_is_killed_only_by_its_own_command_line_under_the_raft_data_dir(tmp_path):
    settings = Settings(admin_token="t", data_dir=tmp_path)
    node_2 = kv_node(settings, 2)
    assert node_2.pid_file == tmp_path / "raft" / "run" / "node-2.pid"
    # stand-ins with the command lines `txlab raft up` gives nodes 1 and 2
    processes = {i: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "raft.cli", "node",
                                      "--id", str(i), "--nodes", "3"]) for i in (1, 2)}
    try:
        node_2.pid_file.parent.mkdir(parents=True)
        node_2.pid_file.write_text(str(processes[1].pid))  # node 1's pid in node 2's file: never signalled
        with pytest.raises(ControlRefused, match="only `txlab raft up` can kill and restart it"):
            kill_and_hold(node_2)
        assert processes[1].poll() is None and not is_held(node_2)
        node_2.pid_file.write_text(str(processes[2].pid))
        assert shown(lambda: running_pid(node_2)) == processes[2].pid
        assert kill_and_hold(node_2) == processes[2].pid
        assert processes[2].wait(10) == -9 and node_2.hold_file.exists()
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
