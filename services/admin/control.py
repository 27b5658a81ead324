"""Admin's hand on a supervisor's children: kill one and keep it down, or let it start again.

Two supervisors share one control channel, a run directory: `txlab up` (services/supervisor.py) for the services
and the coordinator replicas, and `txlab raft up` (raft/cluster.py) for the Raft KV nodes. Each writes a running
child's pid to its pid file, and does not restart a child that exited while its hold file exists. So a kill is:
create the hold file, then SIGKILL the pid; a restart is: remove the hold file (the supervisor starts the child
again), or, for a child that runs, SIGTERM it (the supervisor restarts it as after any exit). Only a pid whose
command line is that child's own is ever signalled: a stale pid file cannot hit another process.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from raft import cluster
from services import supervisor
from services.common.settings import Settings


class ControlRefused(RuntimeError):
    """The child cannot be reached through a supervisor, or is not in a state the request needs."""


@dataclass(frozen=True)
class Child:
    """A supervised process as admin sees it: its control files, and the arguments its command line holds."""

    name: str
    pid_file: Path
    hold_file: Path
    argv: tuple[str, ...]  # consecutive arguments of the child's command line, and of no other process's
    supervisor: str  # the command that supervises it

    def refused(self) -> ControlRefused:
        return ControlRefused(f"{self.name} is not running under a txlab supervisor (no live pid in "
                              f"{self.pid_file}); only `{self.supervisor}` can kill and restart it")


def replica(settings: Settings, name: str) -> Child:
    """A child of `txlab up`: `python -m services.run <name>`."""
    return Child(name, supervisor.pid_file(settings, name), supervisor.hold_file(settings, name),
                 ("services.run", name), "txlab up")


def kv_node(settings: Settings, i: int) -> Child:
    """Node i of the Raft KV cluster of `txlab raft up`: `python -m raft.cli node --id <i> ...`."""
    return Child(f"KV node {i}", cluster.pid_file(settings.kv_dir, i), cluster.hold_file(settings.kv_dir, i),
                 ("raft.cli", "node", "--id", str(i)), "txlab raft up")


def _holds(cmdline: list[str], argv: tuple[str, ...]) -> bool:
    return any(tuple(cmdline[k:k + len(argv)]) == argv for k in range(len(cmdline) - len(argv) + 1))


def running_pid(child: Child) -> int | None:
    """The pid of `child` started by its supervisor, None when there is none."""
    try:
        pid = int(child.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return None
    return pid if _holds(cmdline, child.argv) else None


def is_held(child: Child) -> bool:
    return child.hold_file.exists()


def kill_and_hold(child: Child) -> int:
    """SIGKILL `child` and keep it down until `release`; its pid."""
    pid = running_pid(child)
    if pid is None:
        if is_held(child):
            raise ControlRefused(f"{child.name} is already down (held); restart it to bring it back")
        raise child.refused()
    child.hold_file.touch()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it exited meanwhile: held down all the same
        pass
    except OSError as exc:  # not ours to signal: nothing was killed, so nothing is held
        child.hold_file.unlink(missing_ok=True)
        raise ControlRefused(f"cannot kill {child.name} (pid {pid}): {exc.strerror}") from exc
    return pid


def release(child: Child) -> str:
    """Start `child` again: `released` when it was held down, `restarted` when it was running."""
    if is_held(child):
        child.hold_file.unlink(missing_ok=True)
        return "released"
    pid = running_pid(child)
    if pid is None:
        raise child.refused()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited meanwhile: the supervisor starts it again
        pass
    except OSError as exc:
        raise ControlRefused(f"cannot restart {child.name} (pid {pid}): {exc.strerror}") from exc
    return "restarted"
