"""One cache node hung (SIGSTOP) for 30 s: consumption goes on, reads fall back to the database.

The system runs over three redis-servers of this module's own, so that stopping one touches no other test.
Orders trickle in for the whole hang; every product and order read must answer 200 from the database.
"""

import asyncio
import time
from collections import Counter

import httpx
import psycopg
import pytest

from hashring import Ring
from services.cache.config import node_name, parse_nodes
from services.cache.keys import ORDER_TTL, STOCK_TTL, order_key, stock_key
from services.checker import convergence_counts, run_checks
from services.demo import Client, order_bodies
from services.seed import reset_and_seed
from services.supervisor import Supervisor
from tests.conftest import OwnRedis, destroy, isolated_settings, own_redis_servers

from .conftest import PLAN

HANG_SECONDS = 30
TRICKLE_SECONDS = 0.25  # between orders
REQUEST_BOUND = 5.0  # no order or read may take longer while the node hangs ("does not hang", not a speed)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cache_servers():
    with own_redis_servers(3) as started:
        yield started


@pytest.fixture(scope="module")
def hung_settings(servers, cache_servers, tmp_path_factory):
    nodes = ",".join(node.url for node in cache_servers)
    s = isolated_settings(servers | {"cache_nodes": nodes}, tmp_path_factory.mktemp("cache-hung"))
    yield s
    destroy(s)


@pytest.fixture(scope="module")
async def hung_system(hung_settings):
    await asyncio.to_thread(reset_and_seed, hung_settings, PLAN)
    async with Supervisor(hung_settings) as sup:
        yield sup


def statuses(settings, order_ids: list[str]) -> Counter[str]:
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        rows = conn.execute("SELECT status, count(*) FROM orders WHERE id = ANY(%s::uuid[]) GROUP BY status",
                            [order_ids]).fetchall()
    return Counter(dict(rows))


def stock_row(settings, sku: str) -> dict[str, int]:
    with psycopg.connect(settings.raw_dsn("inventory")) as conn:
        available, reserved, sold = conn.execute(
            "SELECT available, reserved, sold FROM products WHERE sku = %s", [sku]).fetchone()
    return {"available": available, "reserved": reserved, "sold": sold}


async def timed_get(http: httpx.AsyncClient, url: str, latencies: list[float]) -> dict:
    started = time.monotonic()
    response = await http.get(url)
    latencies.append(time.monotonic() - started)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.json()


@pytest.mark.timeout(HANG_SECONDS + 300)
async def test_one_cache_node_hung_for_30_s_consumption_goes_on_and_reads_fall_back_to_the_database(
        hung_settings, cache_servers: list[OwnRedis], hung_system, record_testsuite_property):
    settings = hung_settings
    nodes = parse_nodes(settings.cache_nodes)
    ring = Ring(list(nodes))
    hung = cache_servers[0]
    hung_name = node_name(hung.url)
    sku = next(s for s, _, _, stock in PLAN.catalogue()
               if stock == PLAN.stock and ring.node_for(stock_key(s)) == hung_name)
    rich = [cid for cid, _, bal in PLAN.customer_rows() if bal == PLAN.balance_cents]
    others = order_bodies(PLAN, 1000, "outbox", seed=7)
    inventory, orders_url = settings.url("inventory"), settings.url("order")
    client = Client(settings, retry_for=90.0)
    placed: list[str] = []
    latencies: list[float] = []
    place_latencies: list[float] = []
    final_reads_on_hung_node = 0  # GET /orders/{id} answered PAID/CANCELLED for an order the hung node owns
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            before = await timed_get(http, f"{inventory}/products/{sku}", latencies)  # cached on the node to hang
            hung.hang()
            hang_started = time.monotonic()
            try:
                i = 0
                while time.monotonic() - hang_started < HANG_SECONDS:
                    watched = {"customer_id": rich[i % len(rich)], "items": [{"sku": sku, "qty": 1}]}
                    body = others[i] if i % 2 else watched
                    started = time.monotonic()
                    code, order = await client.place(body)
                    place_latencies.append(time.monotonic() - started)
                    assert code in (200, 201), (code, order)
                    placed.append(order["id"])
                    await timed_get(http, f"{inventory}/products/{sku}", latencies)
                    on_hung = [o for o in placed[-20:] if ring.node_for(order_key(o)) == hung_name]
                    for order_id in on_hung[:3]:
                        seen = await timed_get(http, f"{orders_url}/orders/{order_id}", latencies)
                        final_reads_on_hung_node += seen["status"] in ("PAID", "CANCELLED")
                    i += 1
                    await asyncio.sleep(TRICKLE_SECONDS)
                during = await timed_get(http, f"{inventory}/products/{sku}", latencies)
                completed = await asyncio.to_thread(statuses, settings, placed)
                ring_during = await client.admin("GET", "/cache/ring")
            finally:
                hung.resume()
                resumed = time.monotonic()

            while any((await asyncio.to_thread(convergence_counts, settings)).values()):
                assert time.monotonic() - resumed < 60, "no convergence 60 s after the node resumed"
                await asyncio.sleep(0.2)
            converge_seconds = time.monotonic() - resumed

            await asyncio.sleep(settings.cache_cooldown_seconds + 0.5)  # the next call tries the node again
            # a view the hung node missed the invalidation of is stale for at most its TTL
            tried = time.monotonic()
            while (await timed_get(http, f"{inventory}/products/{sku}", []))["sold"] != \
                    (await asyncio.to_thread(stock_row, settings, sku))["sold"]:
                assert time.monotonic() - resumed < STOCK_TTL + 5, "the stock view stayed stale beyond its TTL"
                await asyncio.sleep(0.2)
            stock_stale_seconds = time.monotonic() - tried
            await timed_get(http, f"{inventory}/products/{sku}", [])  # served by the node that hung
            for order_id in placed:
                while (await timed_get(http, f"{orders_url}/orders/{order_id}", []))["status"] == "PENDING":
                    assert time.monotonic() - resumed < ORDER_TTL + 5, f"order {order_id} read PENDING beyond its TTL"
                    await asyncio.sleep(0.2)
            ring_after = await client.admin("GET", "/cache/ring")
    finally:
        await client.aclose()

    report = await asyncio.to_thread(run_checks, settings, 60)
    final = await asyncio.to_thread(statuses, settings, placed)
    figures = {
        "orders_placed_during_hang": len(placed),
        "orders_completed_during_hang": completed["PAID"] + completed["CANCELLED"],
        "final_order_reads_on_hung_node_during_hang": final_reads_on_hung_node,
        "max_read_seconds_during_hang": round(max(latencies), 3),
        "max_place_seconds_during_hang": round(max(place_latencies), 3),
        "seconds_to_converge_after_resume": round(converge_seconds, 2),
        "seconds_stock_view_stale_once_the_node_serves_again": round(stock_stale_seconds, 2),
    }
    for name, value in figures.items():
        record_testsuite_property(name, value)
    assert report.exit_code == 0, report.to_dict()
    assert final["PAID"] + final["CANCELLED"] == len(placed), final
    # consumption went on: the orders placed in all but the last seconds of the hang were decided during it
    assert figures["orders_completed_during_hang"] >= len(placed) - 5 / TRICKLE_SECONDS, figures
    assert figures["final_order_reads_on_hung_node_during_hang"] > 0, figures
    # reads came from the database: the stock view changed while the node that caches it was stopped
    assert during["sold"] + during["reserved"] > before["sold"] + before["reserved"], (before, during)
    assert figures["max_read_seconds_during_hang"] < REQUEST_BOUND, figures
    assert figures["max_place_seconds_during_hang"] < REQUEST_BOUND, figures
    # the services that cache skipped the hung node while it cooled down, and it serves them again since
    for service in ("order", "inventory"):
        during_stats, after_stats = ring_during["stats"][service][hung_name], ring_after["stats"][service][hung_name]
        assert during_stats["skipped"] > 0, (service, during_stats)
        assert after_stats["stores"] > during_stats["stores"], (service, during_stats, after_stats)
    inventory_during, inventory_after = ring_during["stats"]["inventory"], ring_after["stats"]["inventory"]
    assert inventory_after[hung_name]["hits"] > inventory_during[hung_name]["hits"], inventory_after
