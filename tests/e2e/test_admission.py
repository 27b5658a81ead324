"""Backpressure: once as many orders are undecided as TXLAB_ADMISSION_MAX_PENDING allows, POST /orders waits in
line for room for up to TXLAB_ADMISSION_WAIT_SECONDS; a request that waited that long is answered 429 with
Retry-After and places nothing, and one let in meanwhile is placed; the door opens again as the backlog settles."""

import asyncio
import re
import time

import httpx
import psycopg

from services.checker import run_checks

from .conftest import own_system, settled
from .test_orders_api import PLENTY, RICH

WAIT = 4.0

settings, system = own_system("admission", admission_max_pending=3, admission_wait_seconds=WAIT)
BODY = {"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]}


def _count(settings) -> int:
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


async def test_a_full_backlog_refuses_with_retry_after_and_places_nothing(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=10.0) as http, \
            httpx.AsyncClient(base_url=settings.url("admin"), timeout=10.0,
                              headers={"authorization": f"Bearer {settings.admin_token}"}) as admin:
        # the relay holds each order.created for 8 s: the first three orders stay undecided meanwhile
        first = await _three_held(http, admin, 8000)
        before = _count(settings)
        started = time.monotonic()
        refused = await http.post("/orders", json=BODY, headers={"Idempotency-Key": "refused-once"})
        assert refused.status_code == 429, refused.text
        assert time.monotonic() - started >= WAIT - 0.1, "it waited in line before it was refused"
        assert refused.headers["retry-after"] == "1"
        assert f"after waiting {WAIT:.1f} s" in refused.json()["detail"]
        # 3, or more for a moment: an order committed while the undecided ones were being counted is in the count
        # and still among those accepted since, until the next count (admission counts an order twice at most,
        # never not at all)
        backlog = re.match(r"(\d+) orders are still being settled \(at most 3 may be now", refused.json()["detail"])
        assert backlog is not None and 3 <= int(backlog.group(1)) <= 6, refused.json()["detail"]
        assert _count(settings) == before, "a refused order is not placed"
        await settled(settings, [r.json()["id"] for r in first], within=30)
        await asyncio.sleep(0.5)  # the next count of undecided orders finds none
        again = await http.post("/orders", json=BODY, headers={"Idempotency-Key": "refused-once"})
        assert again.status_code == 201, again.text
        await settled(settings, [again.json()["id"]], within=30)
    assert (await asyncio.to_thread(run_checks, settings, 30.0)).exit_code == 0


async def test_a_request_waits_its_turn_and_is_placed_once_the_backlog_settles(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=10.0) as http, \
            httpx.AsyncClient(base_url=settings.url("admin"), timeout=10.0,
                              headers={"authorization": f"Bearer {settings.admin_token}"}) as admin:
        first = await _three_held(http, admin, 2000)  # undecided for 2 s: less than the wait
        started = time.monotonic()
        waited = await http.post("/orders", json=BODY)
        assert waited.status_code == 201, waited.text
        assert time.monotonic() - started >= 0.3, "it waited for room: the three were undecided when it came"
        await settled(settings, [r.json()["id"] for r in first] + [waited.json()["id"]], within=30)
    assert (await asyncio.to_thread(run_checks, settings, 30.0)).exit_code == 0


async def _three_held(http: httpx.AsyncClient, admin: httpx.AsyncClient, delay_ms: int) -> list[httpx.Response]:
    """Three orders placed while the relay holds each order.created for `delay_ms`: the backlog is full."""
    armed = await admin.post("/faults", json={"point": "relay.before_publish", "action": "delay",
                                              "delay_ms": delay_ms, "service": "order"})
    assert armed.status_code == 201, armed.text
    first = [await http.post("/orders", json=BODY) for _ in range(3)]
    assert [r.status_code for r in first] == [201, 201, 201]
    await admin.delete("/faults")
    return first
