"""Outages of the real servers under load: RabbitMQ stopped for 30 s (90 s under `make soak`), PostgreSQL
restarted, a service started after orders were placed. Every order converges with no manual step and the
invariants hold. 30 s is 20 times what a relay counting the outage against its rows would need to make them
FAILED (3 attempts here, 0.5 s then 1 s apart), and several of the connections' reconnect backoffs.

These stop and start the machine's own RabbitMQ and PostgreSQL (tests/servers.py), so each test runs its own
system on those local servers, with its own databases, queues and ports."""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
import pytest

from services.cache.keys import CATALOGUE_TTL, customer_key
from services.cache.membership import current_nodes
from services.cache.sharded import ShardedCache
from services.checker import run_checks
from services.common.settings import Settings
from services.demo import Client, order_bodies
from services.seed import SeedPlan, reset_and_seed
from services.supervisor import PROCESSES, Supervisor
from tests import servers
from tests.conftest import destroy, isolated_settings

OUTAGE_SECONDS = float(os.environ.get("TXLAB_OUTAGE_SECONDS", "30"))
PLAN = SeedPlan(products=20, customers=40, stock=1_000, seed=23)

@pytest.fixture
def own_settings(tmp_path):
    local = Settings()
    s = isolated_settings({"pg": local.pg, "amqp": local.amqp, "cache_nodes": local.cache_nodes}, tmp_path)
    yield s
    servers.ensure_rabbitmq_running()
    destroy(s)


class Load:
    """Orders placed by a few careful clients (same Idempotency-Key on every retry) until stopped."""

    def __init__(self, settings: Settings, clients: int = 2, pause: float = 0.2) -> None:
        self.pause = pause
        self.client = Client(settings, retry_for=600.0)
        self.bodies = iter(order_bodies(PLAN, 100_000, "outbox", seed=5))
        self.placed: list[tuple[float, str]] = []  # (when accepted, order id)
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(clients)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            status, order = await self.client.place(next(self.bodies))
            assert status in (200, 201), order
            self.placed.append((time.monotonic(), order["id"]))
            await asyncio.sleep(self.pause)

    def placed_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t, _ in self.placed)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.aclose()


async def final_statuses(client: Client, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order_id in ids:
        r = await client.http.get(f"{client.settings.url('order')}/orders/{order_id}")
        counts[r.json()["status"]] = counts.get(r.json()["status"], 0) + 1
    return counts


async def converge(settings: Settings, since: float) -> float:
    """Seconds from `since` until the system was quiet with every invariant holding (asserted)."""
    report = await asyncio.to_thread(run_checks, settings, 300.0)
    assert report.exit_code == 0, report.to_dict()
    return time.monotonic() - since


@dataclass
class Outcome:
    outage: float  # seconds the server was away
    resumed_after: float  # seconds from its return until the first order was decided
    converged_after: float  # seconds from its return until quiet with every invariant holding
    orders: int
    placed_during: int
    client_retries: int
    statuses: dict[str, int]


async def under_load(settings: Settings, outage: Callable[[], Awaitable[float | None]]) -> Outcome:
    """Run a system under a steady load of orders, cause `outage` five seconds in, and wait for convergence.
    `outage` may return when (wall clock) the server was reachable again; else that is when it returned."""
    await asyncio.to_thread(reset_and_seed, settings, PLAN)
    async with Supervisor(settings, names=PROCESSES):
        load = Load(settings)
        await asyncio.sleep(5)
        down = time.monotonic()
        returned_at = await outage()
        back, back_at = time.monotonic(), time.time()
        if returned_at is not None:
            back, back_at = back - (back_at - returned_at), returned_at
        await asyncio.sleep(5)
        await load.stop()
        after = await converge(settings, back)
        resumed = await asyncio.to_thread(first_decision_after, settings, back_at)
        ids = [order_id for _, order_id in load.placed]
        checker = Client(settings)
        statuses = await final_statuses(checker, ids)
        await checker.aclose()
    assert set(statuses) <= {"PAID", "CANCELLED"} and sum(statuses.values()) == len(ids), statuses
    return Outcome(back - down, resumed, after, len(ids), load.placed_between(down, back), load.client.retries,
                   statuses)


def first_decision_after(settings: Settings, since: float) -> float:
    """Seconds from `since` (wall clock) until an order was next decided."""
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        (first,) = conn.execute("SELECT extract(epoch FROM min(decided_at)) FROM orders "
                                "WHERE decided_at >= to_timestamp(%s)", (since,)).fetchone()
    assert first is not None, "no order was decided after the server returned"
    return float(first) - since


@pytest.mark.stops_servers
async def test_rabbitmq_stopped_under_load_every_order_converges_with_no_manual_step(own_settings):
    async def stop_for_a_while() -> float:
        await asyncio.to_thread(servers.stop_rabbitmq)
        try:
            await asyncio.sleep(OUTAGE_SECONDS)
        finally:
            returned_at = await asyncio.to_thread(servers.start_rabbitmq)
        return returned_at

    seen = await under_load(own_settings, stop_for_a_while)
    print(f"\nRabbitMQ stopped {seen.outage:.0f}s: {seen.orders} orders, {seen.placed_during} placed during the "
          f"outage; first order decided {seen.resumed_after:.1f}s and all converged {seen.converged_after:.1f}s "
          f"after it returned; 0 manual steps; {seen.statuses}")
    assert seen.placed_during > 0, "orders are accepted while RabbitMQ is down (the outbox holds their events)"


@pytest.mark.stops_servers
async def test_postgresql_restarted_under_load_every_order_converges(own_settings):
    async def restart() -> None:
        await asyncio.to_thread(servers.restart_postgres)

    seen = await under_load(own_settings, restart)
    print(f"\nPostgreSQL restart took {seen.outage:.1f}s: {seen.orders} orders; first order decided "
          f"{seen.resumed_after:.1f}s and all converged {seen.converged_after:.1f}s after it answered again; "
          f"{seen.client_retries} client retries; 0 manual steps; {seen.statuses}")


async def know_customers(settings: Settings) -> None:
    """Put the customers in the shop's cached catalogue, as a running shop has them: orders can then be
    validated while the payment service is not running yet."""
    async with ShardedCache.from_env(settings, current_nodes(settings)) as cache:
        for customer_id, name, _ in PLAN.customer_rows():
            await cache.set(customer_key(customer_id), {"id": customer_id, "name": name}, ttl=CATALOGUE_TTL)


async def test_a_service_started_after_orders_were_placed_gets_every_event_meant_for_it(own_settings):
    await asyncio.to_thread(reset_and_seed, own_settings, PLAN)
    await know_customers(own_settings)
    async with Supervisor(own_settings, names=("inventory", "order", "admin")):
        client = Client(own_settings)
        placed = [(await client.place(body))[1]["id"] for body in order_bodies(PLAN, 10, "outbox", seed=9)]
        await asyncio.sleep(2)  # inventory has reserved; nobody has charged
        assert set(await final_statuses(client, placed)) == {"PENDING"}
        async with Supervisor(own_settings, names=("payment",)):
            after = await converge(own_settings, time.monotonic())
            statuses = await final_statuses(client, placed)
        await client.aclose()
    print(f"\npayment started late: its {len(placed)} order.created events were waiting; converged {after:.1f}s "
          f"after it started; {statuses}")
    assert set(statuses) <= {"PAID", "CANCELLED"} and sum(statuses.values()) == len(placed)
