"""Backpressure: once as many orders are undecided as TXLAB_ADMISSION_MAX_PENDING allows, POST /orders answers
429 with Retry-After and places nothing; the door opens again as the backlog settles."""

import asyncio
import re

import httpx
import psycopg

from services.checker import run_checks

from .conftest import own_system, settled
from .test_orders_api import PLENTY, RICH

settings, system = own_system("admission", admission_max_pending=3)
BODY = {"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]}


def _count(settings) -> int:
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


async def test_a_full_backlog_refuses_with_retry_after_and_places_nothing(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=10.0) as http, \
            httpx.AsyncClient(base_url=settings.url("admin"), timeout=10.0,
                              headers={"authorization": f"Bearer {settings.admin_token}"}) as admin:
        # the relay holds each order.created for 3 s: the first three orders stay undecided meanwhile
        armed = await admin.post("/faults", json={"point": "relay.before_publish", "action": "delay",
                                                  "delay_ms": 3000, "service": "order"})
        assert armed.status_code == 201, armed.text
        first = [await http.post("/orders", json=BODY) for _ in range(3)]
        assert [r.status_code for r in first] == [201, 201, 201]
        await admin.delete("/faults")
        before = _count(settings)
        refused = await http.post("/orders", json=BODY, headers={"Idempotency-Key": "refused-once"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
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
