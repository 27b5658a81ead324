"""`txlab bench raft`: write throughput and latency of the 3-node Raft KV against a 3-member etcd, and
leader failover time.

Both systems run on loopback on this machine with fsync on, and are driven by the same asyncio HTTP
client (aiohttp, keep-alive, one connection per request in flight) at 1, 64 and 256 requests in flight:
txlab with `PUT /kv/{key}`, etcd (when Debian's `etcd-server` is installed; this bench never installs
it) with its JSON gateway `POST /v3/kv/put`. Every request writes a new key with a 64-byte value.

Failover: kill -9 the leader, then time until some surviving node answers a write with 200; restart the
killed node and wait for it to catch up before the next kill.

`--json FILE` writes the rows ({"writes": [...], "failover": {...}}); `--plot FILE.png` draws writes/s, p50 and
p99 of both systems at each level, and the failover times.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

from bench.plot import Panel, figure, save
from bench.raft_frontends import FRONTENDS
from raft.cluster import LocalCluster
from services.common.docs import first_paragraph

if TYPE_CHECKING:
    from matplotlib.figure import Figure

console = Console()
VALUE = "v" * 64


@dataclass
class Result:
    system: str
    in_flight: int
    writes: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.writes / self.seconds

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    def row(self) -> dict[str, Any]:
        """What the table prints and `--json` writes."""
        return {"system": self.system, "in_flight": self.in_flight, "writes_per_s": self.rate,
                "p50_ms": self.pct(0.5), "p99_ms": self.pct(0.99), "errors": self.errors}


def raft_request(base: str):
    body = json.dumps({"value": VALUE}).encode()

    def make(worker: int, n: int) -> tuple[str, str, bytes]:
        return "PUT", f"{base}/kv/k{worker}-{n}", body

    return make


def etcd_request(base: str):
    value = base64.b64encode(VALUE.encode()).decode()

    def make(worker: int, n: int) -> tuple[str, str, bytes]:
        key = base64.b64encode(f"k{worker}-{n}".encode()).decode()
        return "POST", f"{base}/v3/kv/put", json.dumps({"key": key, "value": value}).encode()

    return make


async def drive(system: str, make, in_flight: int, seconds: float, warmup: float) -> Result:
    """Keep `in_flight` writes outstanding for `seconds` (after `warmup`); count only 200s."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup
        end = start + seconds

        async def worker(w: int) -> None:
            n = 0
            while True:
                now = loop.time()
                if now >= end:
                    return
                method, url, body = make(w, n)
                n += 1
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, data=body, headers=headers,
                                               allow_redirects=False) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                dt = time.perf_counter() - t0
                if now >= start:
                    if ok:
                        latencies.append(dt)
                        counts[0] += 1
                    else:
                        counts[1] += 1

        await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return Result(system, in_flight, counts[0], counts[1], seconds, latencies)


# ------------------------------------------------------------------------------------------- etcd
class EtcdCluster:
    """Three etcd members on loopback (client ports base..base+2, peer ports base+10..base+12)."""

    def __init__(self, binary: str, data_dir: str, base_port: int) -> None:
        self.binary, self.data_dir, self.base = binary, data_dir, base_port
        self.procs: list[subprocess.Popen] = []

    def client_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + i}"

    def start(self) -> None:
        initial = ",".join(f"e{i}=http://127.0.0.1:{self.base + 10 + i}" for i in range(3))
        for i in range(3):
            log = open(os.path.join(self.data_dir, f"etcd-{i}.log"), "ab")
            self.procs.append(subprocess.Popen(
                [self.binary, "--name", f"e{i}", "--data-dir", os.path.join(self.data_dir, f"e{i}"),
                 "--listen-client-urls", self.client_url(i), "--advertise-client-urls", self.client_url(i),
                 "--listen-peer-urls", f"http://127.0.0.1:{self.base + 10 + i}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.base + 10 + i}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--log-level", "error", "--logger", "zap"],
                stdout=subprocess.DEVNULL, stderr=log))
            log.close()

    def leader_url(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(3):
                try:
                    st = httpx.post(self.client_url(i) + "/v3/maintenance/status", json={}, timeout=1).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if st.get("leader") and st["leader"] == st.get("header", {}).get("member_id"):
                    return self.client_url(i)
            time.sleep(0.2)
        raise TimeoutError("etcd elected no leader")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# --------------------------------------------------------------------------------------- failover
def _write_anywhere(cluster: LocalCluster, client: httpx.Client, key: str) -> bool:
    for i in cluster.alive():
        try:
            r = client.put(cluster.http_url(i) + f"/kv/{key}", json={"value": 1})
        except httpx.HTTPError:
            continue
        if r.status_code == 200:
            return True
    return False


def measure_failover(cluster: LocalCluster, kills: int) -> list[float]:
    """Seconds from kill -9 of the leader until a surviving node acknowledged a write, per kill."""
    out: list[float] = []
    with httpx.Client(timeout=0.5) as client:
        for k in range(kills):
            leader = cluster.wait_leader(timeout=10)
            if not _retry_write(cluster, client, f"pre-{k}"):
                raise RuntimeError("the cluster accepts no writes before the kill")
            t0 = time.perf_counter()
            cluster.kill(leader, signal.SIGKILL)
            while not _write_anywhere(cluster, client, f"failover-{k}"):
                time.sleep(0.005)
            out.append(time.perf_counter() - t0)
            cluster.start_node(leader)
            _wait_caught_up(cluster, leader)
    return out


def _retry_write(cluster: LocalCluster, client: httpx.Client, key: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _write_anywhere(cluster, client, key):
            return True
        time.sleep(0.02)
    return False


def _wait_caught_up(cluster: LocalCluster, node: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.leader()
        st, lst = cluster.status(node), cluster.status(leader) if leader else None
        if st and lst and st["applied"] >= lst["commit"] and st["leader"] == leader:
            return
        time.sleep(0.05)
    raise TimeoutError(f"node {node} did not catch up")


# -------------------------------------------------------------------------------------- front ends
def compare_frontends(port: int, seconds: float, rounds: int = 3, json_path: Path | None = None,
                      plot_path: Path | None = None) -> int:
    """Requests/s of each HTTP front end alone, interleaved over `rounds` to average out machine noise."""
    rates: dict[str, list[float]] = {name: [] for name in FRONTENDS}
    p50s: dict[str, list[float]] = {name: [] for name in FRONTENDS}
    for _ in range(rounds):
        for name in FRONTENDS:
            proc = subprocess.Popen([sys.executable, "-m", "bench.raft_frontends", name, str(port)])
            try:
                _wait_port(port)
                r = asyncio.run(drive(name, raft_request(f"http://127.0.0.1:{port}"), 64, seconds, 0.5))
                rates[name].append(r.rate)
                p50s[name].append(r.pct(0.5))
            finally:
                proc.terminate()
                proc.wait(10)
    title = f"HTTP front end alone, 64 in flight (median of {rounds} interleaved rounds)"
    table = Table(title=title)
    for col in ("front end", "requests/s", "p50 ms", "vs fastapi"):
        table.add_column(col, justify="right")
    base = statistics.median(rates["fastapi-uvicorn"])
    rows = [{"front_end": name, "requests_per_s": statistics.median(rates[name]),
             "p50_ms": statistics.median(p50s[name]), "vs_fastapi": statistics.median(rates[name]) / base}
            for name in FRONTENDS]
    for r in rows:
        table.add_row(r["front_end"], f"{r['requests_per_s']:,.0f}", _ms(r["p50_ms"]), f"{r['vs_fastapi']:.2f}x")
    console.print(table)
    _write(json_path, rows, plot_path, lambda: frontends_chart(rows, title))
    return 0


def frontends_chart(rows: list[dict[str, Any]], title: str) -> Figure:
    """Requests/s and p50 of each HTTP front end alone."""
    return figure(title, [Panel(rows, "front_end", {"requests_per_s": "requests/s"}, "requests/s"),
                          Panel(rows, "front_end", {"p50_ms": "p50"}, "p50 latency (ms)")])


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


# ------------------------------------------------------------------------------------------- main
def _ms(x: float) -> str:
    return f"{x:.2f}"


async def _run_levels(systems: list, levels: list[int], seconds: float) -> list[Result]:
    results = []
    for n in levels:
        for name, make in systems:
            results.append(await drive(name, make, n, seconds, warmup=min(1.0, seconds / 4)))
            console.print(f"  {name} @ {n} in flight: {results[-1].rate:,.0f} writes/s")
    return results


TITLE = "3-node replicated writes over HTTP (fsync on, same client)"


def chart(writes: list[dict[str, Any]], failover: dict[str, Any] | None = None) -> Figure:
    """Writes/s, p50 and p99 of each system side by side at each level; the failover times when measured."""
    level = {"x_label": "requests in flight", "series": "system"}
    panels = [Panel(writes, "in_flight", {"writes_per_s": "writes/s"}, "writes/s", **level),
              Panel(writes, "in_flight", {"p50_ms": "p50"}, "p50 latency (ms, log)", log=True, **level),
              Panel(writes, "in_flight", {"p99_ms": "p99"}, "p99 latency (ms, log)", log=True, **level)]
    if failover:
        panels.append(Panel([failover], "kills", {"p50_ms": "p50", "p99_ms": "p99", "max_ms": "max"}, "ms",
                            title="txlab-raft leader failover", x_names={failover["kills"]: (
                                f"kill -9 → first acknowledged write ({failover['kills']} kills)")}))
    return figure(TITLE, panels)


def _write(json_path: Path | None, rows: Any, plot_path: Path | None, draw: Callable[[], Figure]) -> None:
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
        console.print(f"rows written to {json_path}")
    if plot_path:
        save(draw(), plot_path)
        console.print(f"chart written to {plot_path}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="txlab bench raft", description=first_paragraph(__doc__))
    p.add_argument("--levels", default="1,64,256", help="requests in flight, comma list")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    p.add_argument("--kills", type=int, default=20, help="leader kills for the failover measurement")
    p.add_argument("--base-port", type=int, default=7600)
    p.add_argument("--etcd-port", type=int, default=23790)
    p.add_argument("--no-etcd", action="store_true")
    p.add_argument("--frontends", action="store_true",
                   help="only compare HTTP front ends (no Raft behind them) at 64 in flight")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file, as JSON")
    p.add_argument("--plot", type=Path, default=None, help="also draw the table to this PNG")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.frontends:
        return compare_frontends(args.base_port, args.seconds, json_path=args.json, plot_path=args.plot)

    results: list[Result] = []
    failover: list[float] = []
    binary = shutil.which("etcd")
    etcd_note = ""
    if args.no_etcd:
        etcd_note = "etcd skipped (--no-etcd)"
    elif binary is None:
        etcd_note = "etcd not installed (apt-get install etcd-server): no baseline in this run"
    with tempfile.TemporaryDirectory(prefix="txlab-bench-raft-") as tmp:
        cluster = LocalCluster(3, os.path.join(tmp, "raft"), args.base_port,
                               log_dir=os.path.join(tmp, "logs"))
        etcd = EtcdCluster(binary, tmp, args.etcd_port) if binary and not args.no_etcd else None
        try:
            cluster.start()
            systems = [("txlab-raft", raft_request(cluster.http_url(cluster.wait_leader())))]
            if etcd is not None:
                etcd.start()
                try:
                    systems.append(("etcd", etcd_request(etcd.leader_url())))
                except TimeoutError:
                    etcd_note = f"etcd elected no leader (ports {args.etcd_port}+ busy?): no baseline"
                    etcd.stop()
                    etcd = None
            console.print(f"3-node clusters up ({', '.join(n for n, _ in systems)}); levels interleaved "
                          "so that both systems see the same background load")
            results = asyncio.run(_run_levels(systems, levels, args.seconds))
        finally:
            if etcd is not None:
                etcd.stop()
        try:
            if args.kills:
                console.print(f"failover: kill -9 the leader {args.kills} times")
                failover = measure_failover(cluster, args.kills)
        finally:
            cluster.stop()

    table = Table(title=TITLE)
    for col in ("system", "in flight", "writes/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    writes = [r.row() for r in sorted(results, key=lambda r: (r.system != "txlab-raft", r.in_flight))]
    for w in writes:
        table.add_row(w["system"], str(w["in_flight"]), f"{w['writes_per_s']:,.0f}", _ms(w["p50_ms"]),
                      _ms(w["p99_ms"]), str(w["errors"]))
    console.print(table)
    by = {(r.system, r.in_flight): r for r in results}
    if any(s == "etcd" for s, _ in by):
        ratio = Table(title="txlab-raft / etcd")
        for col in ("in flight", "throughput ratio", "p50 ratio (lower is better)"):
            ratio.add_column(col, justify="right")
        for n in levels:
            a, b = by.get(("txlab-raft", n)), by.get(("etcd", n))
            if a and b and b.rate:
                ratio.add_row(str(n), f"{a.rate / b.rate:.2f}x", f"{a.pct(0.5) / b.pct(0.5):.2f}x")
        console.print(ratio)
    if etcd_note:
        console.print(f"[yellow]{etcd_note}[/yellow]")
    kills = None
    if failover:
        ft = Table(title=f"leader failover: kill -9 -> first acknowledged write ({len(failover)} kills)")
        for col in ("p50 ms", "p99 ms", "max ms", "mean ms"):
            ft.add_column(col, justify="right")
        srt = sorted(failover)
        kills = {"kills": len(srt), "p50_ms": srt[len(srt) // 2] * 1000,
                 "p99_ms": srt[min(len(srt) - 1, int(0.99 * len(srt)))] * 1000, "max_ms": srt[-1] * 1000,
                 "mean_ms": statistics.mean(srt) * 1000}
        ft.add_row(*(_ms(kills[k]) for k in ("p50_ms", "p99_ms", "max_ms", "mean_ms")))
        console.print(ft)
    _write(args.json, {"writes": writes, "failover": kills}, args.plot, lambda: chart(writes, kills))
    return 0
