"""Admin's hand on the supervisor's children (services/admin/control.py), on stand-in processes of this test's
own: a kill holds the child down until a release, and a pid file naming any other process is never signalled."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services.admin.control import ControlRefused, is_held, kill_and_hold, release, running_pid
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
    with pytest.raises(ControlRefused, match="not running under a txlab supervisor"):
        kill_and_hold(settings, name)
    # a stand-in child with the command line the supervisor gives its children
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "services.run", name])
    try:
        pid_file(settings, name).parent.mkdir(parents=True)
        pid_file(settings, name).write_text(str(child.pid))
        assert shown(lambda: running_pid(settings, name)) == child.pid
        assert kill_and_hold(settings, name) == child.pid
        assert child.wait(10) == -9 and is_held(settings, name)
        with pytest.raises(ControlRefused, match="already down"):
            kill_and_hold(settings, name)
        assert release(settings, name) == "released" and not hold_file(settings, name).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_stale_pid_file_naming_another_process_is_never_signalled(tmp_path):
    settings = Settings(admin_token="t", data_dir=tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file(settings, "coordinator-2").parent.mkdir(parents=True)
        pid_file(settings, "coordinator-2").write_text(str(other.pid))
        with pytest.raises(ControlRefused):
            kill_and_hold(settings, "coordinator-2")
        assert other.poll() is None and not is_held(settings, "coordinator-2")
    finally:
        other.kill()
        other.wait()
