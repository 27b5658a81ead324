"""`txlab up`: every service as a child process, restarted when it crashes, logs under data_dir/logs.

The control channel other processes (admin) use to stop and start a child lies under data_dir/run: the
supervisor writes each child's pid to `<name>.pid` when it starts it, and does not restart a child that exited
while `<name>.held` exists; it starts it again once that file is removed (see services/admin/control.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.db import migrate
from services.common.settings import DATABASES, Settings, coordinator_node

log = logging.getLogger("txlab.supervisor")

PROCESSES = ("broker", "inventory", "payment", "order", "admin")  # and the coordinator replicas


def all_processes(settings: Settings) -> tuple[str, ...]:
    """Every process of an installation: the services and the coordinator replicas (coordinator-1, ...)."""
    return (*settings.coordinators, *PROCESSES)


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def pid_file(settings: Settings, name: str) -> Path:
    """Where the supervisor writes the pid of the running child `name`."""
    return run_dir(settings) / f"{name}.pid"


def hold_file(settings: Settings, name: str) -> Path:
    """While this file exists, the supervisor does not restart the child `name` once it exits."""
    return run_dir(settings) / f"{name}.held"


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class PortInUse(RuntimeError):
    """A port the supervisor needs is taken."""


class Supervisor:
    """Starts the processes, restarts any that exits unexpectedly, stops them all by pid."""

    def __init__(self, settings: Settings, names: tuple[str, ...] | None = None) -> None:
        self.settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
        self.children = {name: Child(name) for name in names or all_processes(settings)}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._owns_control_files = False  # only once its ports were found free: a refused run touches nothing

    def migrate(self) -> None:
        for database in DATABASES:
            migrate(self.settings, database)

    def _check_ports_free(self) -> None:
        """Refuse to start over processes that are not ours (an orphaned earlier run, another program)."""
        for name, port in self._ports():
            with socket.socket() as probe:
                if probe.connect_ex((self.settings.host, port)) == 0:
                    raise PortInUse(f"{name}'s port {self.settings.host}:{port} is already "
                                    "in use (is another txlab running? stop it, or set TXLAB_*_PORT)")

    def _ports(self) -> list[tuple[str, int]]:
        ports = []
        for name in self.children:
            ports.append((name, self.settings.port(name)))
            if name.startswith("coordinator-"):
                ports.append((f"{name} (raft)", self.settings.coordinator_raft_port + coordinator_node(name) - 1))
        return ports

    async def start(self, health_timeout: float = 60.0) -> None:
        self._check_ports_free()
        self._owns_control_files = True
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self.settings.save_token()
        # faults armed in an earlier run must not break this one
        shutil.rmtree(self.settings.data_dir / "faults", ignore_errors=True)
        self._forget_control_files()  # and no hold of an earlier run either
        await asyncio.to_thread(self.migrate)
        for child in self.children.values():
            await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child), name=f"watch-{child.name}"))
        await self.wait_healthy(health_timeout)

    async def _spawn(self, child: Child) -> None:
        env = os.environ | self.settings.child_env()
        logfile = open(self.settings.log_dir / f"{child.name}.log", "ab")
        try:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.run", child.name, env=env, stdout=logfile,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        finally:
            logfile.close()
        run_dir(self.settings).mkdir(parents=True, exist_ok=True)
        pid_file(self.settings, child.name).write_text(str(child.process.pid))

    async def _wait_released(self, child: Child) -> None:
        """While an operator holds the child down (its `.held` file exists), wait."""
        held = hold_file(self.settings, child.name)
        if held.exists():
            log.warning("%s is held down; it starts again when %s is removed", child.name, held)
        while True:
            if not held.exists() or self._stopping:
                return
            await asyncio.sleep(0.2)  # a file, not an event: the hold is set and lifted by another process

    async def _watch(self, child: Child) -> None:
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            child.exits.append(code)
            child.restarts += 1
            pid_file(self.settings, child.name).unlink(missing_ok=True)
            log.warning("%s exited with %s; restarting (restart #%d)", child.name, code, child.restarts)
            await self._wait_released(child)
            await asyncio.sleep(min(0.2 * child.restarts, 2.0))
            if not self._stopping:
                await self._spawn(child)

    async def wait_healthy(self, timeout: float = 60.0, names: tuple[str, ...] | None = None) -> None:
        """Return when every process answers GET /health with 200; raise TimeoutError naming the laggards."""
        deadline = time.monotonic() + timeout
        pending = set(names or self.children)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for name in list(pending):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.settings.url(name)}/health")).status_code == 200:
                            pending.discard(name)
                if pending:
                    if time.monotonic() > deadline:
                        logs = ", ".join(str(self.settings.log_dir / f"{n}.log") for n in sorted(pending))
                        raise TimeoutError(f"not healthy after {timeout:.0f}s: {', '.join(sorted(pending))} "
                                           f"(see {logs})")
                    await asyncio.sleep(0.1)

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one child (it is restarted like after any crash)."""
        child = self.children[name]
        if child.process and child.process.returncode is None:
            child.process.send_signal(sig)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        procs = [c.process for c in self.children.values() if c.process and c.process.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 8.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._forget_control_files()

    def _forget_control_files(self) -> None:
        """Remove this supervisor's children's pid and hold files (another supervisor may share the dir); a
        supervisor refused at the start (its ports in use) leaves the running one's alone."""
        if not self._owns_control_files:
            return
        for name in self.children:
            pid_file(self.settings, name).unlink(missing_ok=True)
            hold_file(self.settings, name).unlink(missing_ok=True)

    async def __aenter__(self) -> Supervisor:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
