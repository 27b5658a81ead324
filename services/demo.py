"""`txlab demo`: the e-commerce scenario end to end, under faults, with a result table.

Places orders from a reproducible set of customers and products (some scarce, some customers poor, so
both compensations happen), waits for the system to converge, and runs the invariant checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.checker import CannotCheck, Report, run_checks, wait_quiet
from services.common.faults import Arming, FaultSpecError, parse_spec
from services.common.settings import Settings
from services.common.tracing import http_transport
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import Supervisor

# What happens after order.created is the same for every pattern; what comes before it is each pattern's own.
_DOWNSTREAM = (
    "inventory.before_commit=crash,times=1,p=0.01",
    "payment.before_commit=crash,times=1,p=0.01",
    "bus.deliver=duplicate,p=0.05",
    "bus.publish=duplicate,p=0.05",
)
RANDOM_FAULTS = {
    "outbox": ("order.after_local_commit=crash,times=1,p=0.02", "relay.before_publish=crash,times=1,p=0.01",
               "relay.after_publish=crash,times=1,p=0.02", *_DOWNSTREAM),
    "halfmsg": ("order.after_half_sent=crash,times=1,p=0.02", "order.before_half_decision=crash,times=1,p=0.02",
                "broker.before_deliver=crash,times=1,p=0.01", "broker.check_back=error,p=0.3", *_DOWNSTREAM),
    # no messages: the coordinator's leader dies, Tries arrive after the deadline (and after their Cancel),
    # Confirms and Cancels fail and are retried
    "tcc": ("coordinator.tcc.after_try=crash,times=1,p=0.02", "coordinator.tcc.after_decision=crash,times=1,p=0.02",
            "coordinator.tcc.hold_try=delay:7000,times=2,p=0.02", "inventory.tcc.try=delay:7000,times=2,p=0.02",
            "payment.tcc.confirm=error,p=0.1", "inventory.tcc.cancel=error,p=0.1",
            "payment.tcc.try=crash,times=1,p=0.01"),
    # the coordinator's leader dies at each step; a participant dies holding a prepared branch; answers are lost
    # (retried); commits fail (retried). The sweeper and the new leader leave nothing prepared.
    "2pc": ("coordinator.2pc.after_prepare_one=crash,times=1,p=0.02",
            "coordinator.2pc.after_prepare_all=crash,times=1,p=0.02",
            "coordinator.2pc.after_decision=crash,times=1,p=0.02",
            "coordinator.2pc.after_first_commit=crash,times=1,p=0.02",
            "inventory.xa.prepare=crash,times=1,p=0.01", "payment.xa.commit=crash,times=1,p=0.01",
            "payment.xa.prepare=error,p=0.05", "inventory.xa.commit=error,p=0.1"),
    # the same, without the partition that makes 3PC inconsistent by design (txlab scenario 3pc-partition)
    "3pc": ("coordinator.3pc.after_pre_commit_one=crash,times=1,p=0.02",
            "coordinator.3pc.before_do_commit=crash,times=1,p=0.02",
            "inventory.3pc.can_commit=error,p=0.05", "payment.3pc.pre_commit=error,p=0.05",
            "payment.3pc.do_commit=error,p=0.1", "inventory.3pc.do_commit=crash,times=1,p=0.01"),
}


def fault_plan(specs: list[str], pattern: str = "outbox") -> list[Arming]:
    """`none`, `random` (the pattern's own set), or explicit `point=action[...]` specs."""
    if not specs or specs == ["none"]:
        return []
    if specs == ["random"]:
        specs = list(RANDOM_FAULTS[pattern])
    elif {"none", "random"} & set(specs):
        raise FaultSpecError("none and random stand alone: give one of them, or point=action specs only")
    return [parse_spec(s) for s in specs]


@dataclass
class DemoResult:
    pattern: str
    placed: int = 0
    rejected: int = 0  # POST answered 4xx (not 429): not an order
    refused: int = 0  # POST answered 429 (admission control): retried after its Retry-After
    place_seconds: float = 0.0
    convergence_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    post_latencies: list[float] = field(default_factory=list)
    e2e_latencies: list[float] = field(default_factory=list)
    settle_seconds: float = 0.0  # from the first order's acceptance to the last order's decision
    faults_fired: dict[str, int] = field(default_factory=dict)
    client_retries: int = 0
    report: Report | None = None

    @property
    def throughput(self) -> float:
        return self.placed / self.place_seconds if self.place_seconds else 0.0

    @property
    def settled_per_s(self) -> float:
        """Orders decided per second, from the first acceptance to the last decision: what the whole pipeline
        sustains, not only how fast POST /orders answers."""
        decided = len(self.e2e_latencies)
        return decided / self.settle_seconds if self.settle_seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def retry_after(response: httpx.Response, default: float = 1.0) -> float:
    """The seconds a 429 or 503 asks to wait (Retry-After in seconds), between half of it and all of it, so
    that the refused clients come back spread out rather than all at once."""
    try:
        seconds = float(response.headers.get("retry-after", default))
    except ValueError:
        seconds = default
    return max(seconds, 0.0) * random.uniform(0.5, 1.0)


LANE = 16
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Client:
    """Places orders like a careful shop front: retries with the same Idempotency-Key until answered."""

    def __init__(self, settings: Settings, retry_for: float = 60.0, concurrency: int = 16) -> None:
        self.settings = settings
        self.retry_for = retry_for
        # one connection pool per LANE orders in flight, each sending with aiohttp: httpx's own pool costs CPU per
        # request in proportion to its connections, and at 128 in flight one pool made the load generator, not
        # txlab, the bottleneck
        self._lanes = [httpx.AsyncClient(timeout=10.0, transport=http_transport(httpx.Limits(max_connections=LANE)))
                       for _ in range(max(1, -(-concurrency // LANE)))]
        self._next = itertools.cycle(self._lanes)
        self.http = self._lanes[0]
        self.retries = 0
        self.refused = 0  # 429s: the order service was full and said when to come back

    async def place(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = str(uuid.uuid4())
        lane = next(self._next)
        deadline = time.monotonic() + self.retry_for
        while True:
            pause = 0.2
            try:
                r = await lane.post(f"{self.settings.url('order')}/orders", json=body,
                                    headers={"Idempotency-Key": key})
                if r.status_code == 429:
                    self.refused += 1
                    pause = retry_after(r)
                elif r.status_code < 500:
                    return r.status_code, r.json()
                else:
                    self.retries += 1
            except httpx.HTTPError:
                self.retries += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"order service did not take the order for {self.retry_for:.0f}s")
            await asyncio.sleep(pause)

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the admin API; while a service restarts (503), try again for up to `retry_for` seconds."""
        deadline = time.monotonic() + self.retry_for
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = await self.http.request(method, f"{self.settings.url('admin')}{path}",
                                            headers={"authorization": f"Bearer {self.settings.admin_token}"},
                                            **kwargs)
                if r.status_code != 503 or time.monotonic() > deadline:
                    r.raise_for_status()
                    return r.json()
            if time.monotonic() > deadline:
                raise TimeoutError(f"admin API did not answer {method} {path} for {self.retry_for:.0f}s")
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()


def order_bodies(plan: SeedPlan, count: int, pattern: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    skus = [f"sku-{i:04d}" for i in range(plan.products)]
    customers = [f"c{i:05d}" for i in range(plan.customers)]
    return [{"customer_id": rng.choice(customers), "pattern": pattern,
             "items": [{"sku": s, "qty": rng.randint(1, 3)} for s in rng.sample(skus, rng.randint(1, 3))]}
            for _ in range(count)]


async def system_running(settings: Settings) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        try:
            return all([(await client.get(f"{settings.url(s)}/health")).status_code == 200
                        for s in ("order", "inventory", "payment", "admin")])
        except httpx.HTTPError:
            return False


@contextlib.asynccontextmanager
async def running_system(settings: Settings, console: Console) -> AsyncIterator[Supervisor | None]:
    """The running system, or one started for the duration of the block."""
    if await system_running(settings):
        yield None
        return
    console.print("[dim]starting the services (logs in "
                  f"{settings.log_dir})…[/dim]")
    # The children run in sessions of their own (a Ctrl-C in the terminal reaches this process alone, which stops
    # them in order). SIGTERM and SIGHUP would end this process without a word and leave them running, holding
    # their ports: they stop the run as Ctrl-C does, then exit 128 + the signal.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    caught: list[int] = []

    def stop_on(sig: int) -> None:
        caught.append(sig)
        if task is not None:
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop_on, sig)
    try:
        async with Supervisor(settings) as sup:
            yield sup
    except asyncio.CancelledError:
        if caught:
            console.print(f"[yellow]stopped by {signal.Signals(caught[0]).name}; the services it started are "
                          "stopped[/yellow]")
            raise SystemExit(128 + caught[0]) from None
        raise
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def e2e_latencies(settings: Settings) -> tuple[dict[str, int], list[float], float]:
    """Orders by status, each decided order's seconds from acceptance to decision, and the seconds from the
    first order's acceptance to the last order's decision."""
    with psycopg.connect(f"{settings.pg.rstrip('/')}/{settings.database('order')}") as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
        lat = [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM decided_at - created_at) FROM orders WHERE decided_at IS NOT NULL")]
        span = conn.execute("SELECT extract(epoch FROM max(decided_at) - min(created_at)) FROM orders").fetchone()[0]
    return statuses, [float(x) for x in lat], float(span or 0.0)


async def wait_converged(settings: Settings, timeout: float, progress: Progress | None) -> float:
    """Wait until the system is quiet (outages included, up to `timeout` seconds); return how long it took."""
    start = time.monotonic()
    task = progress.add_task("converging", total=None) if progress else None

    def show(counts: dict[str, int] | None, down: CannotCheck | None) -> None:
        if progress is None or task is None:
            return
        waited = f"{time.monotonic() - start:.0f}/{timeout:.0f}s"
        if down is not None:
            progress.update(task, description=f"waiting for a server ({waited}): {down}")
        else:
            progress.update(task, description=f"converging ({waited}): " + ", ".join(
                f"{k}={v}" for k, v in counts.items() if v) if counts else "converging")

    await asyncio.to_thread(wait_quiet, settings, timeout, 0.2, show)
    return time.monotonic() - start


async def run_demo(settings: Settings, *, orders: int = 200, concurrency: int = 16, pattern: str = "outbox",
                   faults: list[Arming] | None = None, plan: SeedPlan | None = None,
                   converge_timeout: float = 300.0, console: Console | None = None,
                   on_seeded: Callable[[], object] | None = None,
                   on_converged: Callable[[], object] | None = None) -> DemoResult:
    """Place `orders` orders of `pattern` on freshly seeded data (starting the system when it is not running),
    wait until the system is quiet, and check. `on_seeded` and `on_converged` are called once the data is
    seeded and once the system is quiet after the last order, while the system still runs."""
    console = console or Console()
    plan = plan or SeedPlan()
    result = DemoResult(pattern=pattern)
    async with running_system(settings, console):
        await asyncio.to_thread(reset_and_seed, settings, plan)
        if on_seeded is not None:
            on_seeded()
        client = Client(settings, retry_for=converge_timeout, concurrency=concurrency)
        try:
            await client.admin("DELETE", "/faults")
            for arming in faults or []:
                await client.admin("POST", "/faults", json=arming.request())
            bodies = order_bodies(plan, orders, pattern, plan.seed)
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            for body in bodies:
                queue.put_nowait(body)
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=True) as progress:
                placing = progress.add_task(f"placing {orders} orders ({pattern})", total=orders)

                async def worker() -> None:
                    while not queue.empty():
                        body = queue.get_nowait()
                        t0 = time.perf_counter()
                        status, _ = await client.place(body)
                        result.post_latencies.append(time.perf_counter() - t0)
                        if status in (200, 201, 202):  # 202: recorded, its transaction begun later
                            result.placed += 1
                        else:
                            result.rejected += 1
                        progress.advance(placing)

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
                result.place_seconds = time.perf_counter() - t0
                for armed in await client.admin("GET", "/faults"):
                    result.faults_fired[armed["point"]] = result.faults_fired.get(armed["point"], 0) + armed["fired"]
                await client.admin("DELETE", "/faults")
                result.convergence_seconds = await wait_converged(settings, converge_timeout, progress)
                if on_converged is not None:
                    on_converged()
        finally:
            result.client_retries = client.retries
            result.refused = client.refused
            await client.aclose()
        # Quiet by now, or it never will be; but a server may go down right after convergence: the check
        # waits it out within what is left of the convergence budget (at least 10 s)
        left = max(10.0, converge_timeout - result.convergence_seconds)
        result.report = await asyncio.to_thread(run_checks, settings, left)
        result.statuses, result.e2e_latencies, result.settle_seconds = await asyncio.to_thread(e2e_latencies,
                                                                                               settings)
    return result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def render(result: DemoResult, console: Console) -> None:
    table = Table(title=f"txlab demo — pattern {result.pattern}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("orders placed", str(result.placed))
    table.add_row("  paid", str(result.statuses.get("PAID", 0)))
    table.add_row("  cancelled", str(result.statuses.get("CANCELLED", 0)))
    table.add_row("  still pending", str(result.statuses.get("PENDING", 0)))
    table.add_row("requests refused (4xx)", str(result.rejected))
    table.add_row("refused while full (429, retried after Retry-After)", str(result.refused))
    table.add_row("throughput (orders placed/s)", f"{result.throughput:.1f}")
    table.add_row("throughput (orders decided/s, first placed → last decided)", f"{result.settled_per_s:.1f}")
    table.add_row("POST /orders p50 / p99", f"{ms(percentile(result.post_latencies, 50))} / "
                                            f"{ms(percentile(result.post_latencies, 99))}")
    table.add_row("end-to-end p50 / p99 (accepted → final)", f"{ms(percentile(result.e2e_latencies, 50))} / "
                                                             f"{ms(percentile(result.e2e_latencies, 99))}")
    table.add_row("convergence after the last order", f"{result.convergence_seconds:.2f} s")
    fired = ", ".join(f"{k}×{v}" for k, v in sorted(result.faults_fired.items()) if v) or "none"
    table.add_row("faults fired", fired)
    table.add_row("client retries (same Idempotency-Key)", str(result.client_retries))
    console.print(table)
    if result.report:
        render_report(result.report, console)


def render_report(report: Report, console: Console) -> None:
    table = Table(title="invariants", show_header=True)
    for col in ("invariant", "holds", "checked", "counts"):
        table.add_column(col)
    for inv in report.invariants:
        counts = ", ".join(f"{k}={v}" for k, v in inv.counts.items())
        table.add_row(inv.name, "[green]yes[/green]" if inv.holds else f"[red]NO ({len(inv.violations)})[/red]",
                      str(inv.checked), counts)
    console.print(table)
    for inv in report.invariants:
        for violation in inv.violations[:10]:
            console.print(f"[red]✗ {inv.name.split(':')[0]}: {violation}[/red]")
