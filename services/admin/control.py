"""Admin's hand on the supervisor's children: kill one and keep it down, or let it start again.

The channel is the supervisor's run directory (services/supervisor.py): it writes each child's pid to
`<name>.pid`, and does not restart a child that exited while `<name>.held` exists. So a kill is: create the hold
file, then SIGKILL the pid; a restart is: remove the hold file (the supervisor starts the child again), or, for
a child that runs, SIGTERM it (the supervisor restarts it as after any exit). Only a pid whose command line is
that child's `python -m services.run <name>` is ever signalled: a stale pid file cannot hit another process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from services.common.settings import Settings
from services.supervisor import hold_file, pid_file


class ControlRefused(RuntimeError):
    """The child cannot be reached through a supervisor, or is not in a state the request needs."""


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of the running child `name` started by a supervisor, None when there is none."""
    try:
        pid = int(pid_file(settings, name).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"services.run" in cmdline and name.encode() in cmdline else None


def is_held(settings: Settings, name: str) -> bool:
    return hold_file(settings, name).exists()


def kill_and_hold(settings: Settings, name: str) -> int:
    """SIGKILL the child `name` and keep it down until `release`; its pid."""
    pid = running_pid(settings, name)
    if pid is None:
        if is_held(settings, name):
            raise ControlRefused(f"{name} is already down (held); restart it to bring it back")
        raise ControlRefused(f"{name} is not running under a txlab supervisor (no live pid in "
                             f"{pid_file(settings, name)}); only `txlab up` can kill and restart it")
    hold_file(settings, name).touch()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it exited meanwhile: held down all the same
        pass
    except OSError as exc:  # not ours to signal: nothing was killed, so nothing is held
        hold_file(settings, name).unlink(missing_ok=True)
        raise ControlRefused(f"cannot kill {name} (pid {pid}): {exc.strerror}") from exc
    return pid


def release(settings: Settings, name: str) -> str:
    """Start the child `name` again: `released` when it was held down, `restarted` when it was running."""
    if is_held(settings, name):
        hold_file(settings, name).unlink(missing_ok=True)
        return "released"
    pid = running_pid(settings, name)
    if pid is None:
        raise ControlRefused(f"{name} is not running under a txlab supervisor (no live pid in "
                             f"{pid_file(settings, name)}); only `txlab up` can kill and restart it")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited meanwhile: the supervisor starts it again
        pass
    except OSError as exc:
        raise ControlRefused(f"cannot restart {name} (pid {pid}): {exc.strerror}") from exc
    return "restarted"
