"""A local cluster of real node processes on loopback: start, kill -9, restart, find the leader; and the
admin token its nodes demand.

Used by `txlab raft up`, the scenarios, the benchmark and the integration tests, so that each of them
stops exactly the processes it started (by pid) and nothing else. Only `txlab raft up` supervises its nodes
(`restart_exited`): the tests and scenarios kill nodes on purpose and want them to stay down.

The control channel of a supervised cluster lies under `<data_dir>/run`, as `txlab up`'s does: each running
node's pid in `node-<i>.pid`, and while `node-<i>.held` exists, node i is not restarted once it exits
(services/admin/control.py sets and lifts that hold).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.settings import Settings


def _ephemeral_floor() -> int:
    """The lowest port the kernel gives to outgoing connections (Linux's ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def taken_ports(ports: list[int]) -> list[int]:
    """Those of `ports` that something accepts connections on at 127.0.0.1."""
    taken = []
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


def free_base_port(nodes: int = 3) -> int:
    """A base port such that base..base+n-1 (HTTP) and base+100..base+100+n-1 (Raft) are free right now.

    Chosen below the ephemeral range: a port free now but in that range can become the local end of any
    outgoing connection (a database pool's, say) before the node binds it, and stay taken while it lives."""
    top = max(11_000, min(_ephemeral_floor(), 40_000) - 100 - nodes)
    for _ in range(200):
        base = random.randrange(10_000, top)
        socks = []
        try:
            for port in [*range(base, base + nodes), *range(base + 100, base + 100 + nodes)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range on 127.0.0.1")


def admin_token() -> str:
    """The admin token of this txlab installation, the one its services demand too: $TXLAB_ADMIN_TOKEN,
    else the one saved in $TXLAB_DATA_DIR/admin-token, else a new random one saved there first. Processes
    racing to create it all end up with the same one: the first saved."""
    settings = Settings()
    path = settings.token_file
    if os.environ.get("TXLAB_ADMIN_TOKEN") or path.exists():
        return settings.admin_token
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(settings.admin_token)
    try:
        os.link(tmp, path)  # creates the file only if absent, and never half-written
    except FileExistsError:
        return path.read_text().strip()
    finally:
        tmp.unlink()
    return settings.admin_token


def pid_file(data_dir: str | Path, i: int) -> Path:
    """Where a supervising `txlab raft up` writes the pid of its running node i."""
    return Path(data_dir) / "run" / f"node-{i}.pid"


def hold_file(data_dir: str | Path, i: int) -> Path:
    """While this file exists, a supervising `txlab raft up` does not restart node i once it exits."""
    return Path(data_dir) / "run" / f"node-{i}.held"


@dataclass
class LocalCluster:
    nodes: int
    data_dir: str
    base_port: int = 7200
    quorum: str = "majority"
    election_tick: int | None = None
    snapshot_every: int | None = None
    extra_args: list[str] = field(default_factory=list)  # more `txlab raft node` options for every node
    log_dir: str | None = None  # node stderr goes to log_dir/node-i.log when set, else inherited
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    admin_token: str = field(default_factory=admin_token)  # every node demands it on its admin routes
    supervised: bool = False  # write pid files under data_dir/run, for `restart_exited` and admin's kill
    exited: set[int] = field(default_factory=set)  # supervised nodes that exited, to be started again

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def http_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + i - 1}"

    def ports_in_use(self) -> list[int]:
        """The HTTP and Raft ports of this cluster's nodes that something answers on now (another cluster)."""
        return taken_ports([p for i in range(1, self.nodes + 1) for p in (self.base_port + i - 1,
                                                                         self.base_port + 100 + i - 1)])

    def command(self, i: int) -> list[str]:
        """The `txlab raft node` command line of node i (ids above `nodes` join an existing cluster)."""
        cmd = [sys.executable, "-m", "raft.cli", "node", "--id", str(i), "--nodes", str(self.nodes),
               "--base-port", str(self.base_port), "--data-dir", self.data_dir, "--quorum", self.quorum]
        if self.election_tick is not None:
            cmd += ["--election-tick", str(self.election_tick)]
        if self.snapshot_every is not None:
            cmd += ["--snapshot-every", str(self.snapshot_every)]
        if i > self.nodes:
            cmd.append("--join")
        return cmd + self.extra_args

    def start(self, ids: list[int] | None = None) -> None:
        """Start the given nodes (all by default) and wait until each answers HTTP."""
        ids = ids or list(range(1, self.nodes + 1))
        for i in ids:
            self.start_node(i, wait=False)
        for i in ids:
            self.wait_http(i)

    def start_node(self, i: int, wait: bool = True) -> None:
        stderr = None
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            stderr = open(os.path.join(self.log_dir, f"node-{i}.log"), "ab")
        env = {**os.environ, "TXLAB_ADMIN_TOKEN": self.admin_token}
        self.procs[i] = subprocess.Popen(self.command(i), stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        if stderr is not None:
            stderr.close()
        if self.supervised:
            self._write_pid(i, self.procs[i].pid)
        if wait:
            self.wait_http(i)

    def wait_http(self, i: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with code {proc.returncode}")
            try:
                httpx.get(self.http_url(i) + "/healthz", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(f"node {i} did not answer HTTP within {timeout}s")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill node i (SIGKILL by default: no chance to flush anything) and reap it."""
        proc = self.procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def _write_pid(self, i: int, pid: int) -> None:
        path = pid_file(self.data_dir, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_text(str(pid))
        os.replace(tmp, path)  # a reader sees the old pid or the new one, never a half-written one

    def restart_exited(self) -> list[str]:
        """Start again each node that exited, unless it is held (`hold_file`): then once the hold is lifted.
        What happened, a line per event. A node's pid file names only a process that runs (or just exited)."""
        news = []
        for i, proc in list(self.procs.items()):
            if proc.poll() is not None:
                del self.procs[i]
                pid_file(self.data_dir, i).unlink(missing_ok=True)
                news.append(f"node {i} exited with code {proc.returncode}")
                if hold_file(self.data_dir, i).exists():
                    news.append(f"node {i} is held down: it starts again once {hold_file(self.data_dir, i)} "
                                "is removed")
                self.exited.add(i)
        for i in sorted(self.exited):
            if not hold_file(self.data_dir, i).exists():
                self.exited.discard(i)
                self.start_node(i, wait=False)
                news.append(f"node {i} restarted (pid {self.procs[i].pid})")
        return news

    def forget_control_files(self) -> None:
        """Remove this cluster's nodes' pid and hold files (a hold of an earlier run must not keep a node down)."""
        for i in range(1, self.nodes + 1):
            pid_file(self.data_dir, i).unlink(missing_ok=True)
            hold_file(self.data_dir, i).unlink(missing_ok=True)

    def alive(self) -> list[int]:
        return sorted(i for i, p in self.procs.items() if p.poll() is None)

    def status(self, i: int, timeout: float = 1.0) -> dict | None:
        try:
            r = httpx.get(self.http_url(i) + "/raft/status", timeout=timeout)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def statuses(self) -> dict[int, dict | None]:
        return {i: self.status(i) for i in range(1, self.nodes + 1)}

    def leader(self, among: list[int] | None = None) -> int | None:
        """The node that says it is leader (highest term wins if stale leaders linger), or None."""
        best: tuple[int, int] | None = None
        for i in among or self.alive():
            st = self.status(i)
            if st and st["role"] == "leader" and (best is None or st["term"] > best[0]):
                best = (st["term"], i)
        return best[1] if best else None

    def wait_leader(self, timeout: float = 10.0, among: list[int] | None = None) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader(among)
            if leader is not None:
                return leader
            time.sleep(0.02)
        raise TimeoutError(f"no leader within {timeout}s")

    def stop(self) -> None:
        """Terminate every node this cluster started (SIGTERM, then SIGKILL after 5 s)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        self.exited.clear()
        if self.supervised:
            self.forget_control_files()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
