"""A row the relay cannot publish is parked after its attempt budget, shown by the admin API, and
delivered when re-sent; the order then completes as if nothing happened."""

import asyncio

from services.checker import run_checks

from .test_orders_api import PLENTY, RICH, final


async def test_unpublishable_row_is_parked_visible_and_resendable(client, http, settings, system):
    await client.admin("POST", "/faults", json={"point": "relay.before_publish", "action": "drop",
                                                "service": "order"})
    try:
        _, order = await client.place({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]})
        for _ in range(200):
            parked = [r for r in await client.admin("GET", "/outbox/failed") if r["order_id"] == order["id"]]
            if parked:
                break
            await asyncio.sleep(0.1)
        assert [(r["service"], r["order_id"], r["routing_key"]) for r in parked] == [
            ("order", order["id"], "order.created")]
        assert parked[0]["attempts"] == settings.relay_max_attempts and "drop" in parked[0]["last_error"]
        assert (await http.get(f"/orders/{order['id']}")).json()["status"] == "PENDING"
        report = await asyncio.to_thread(run_checks, settings)
        assert report.invariants[-1].counts.get("order_outbox_failed") == 1
    finally:
        await client.admin("DELETE", "/faults")
    assert await client.admin("POST", "/outbox/order/resend") == {"resent": 1}
    assert (await final(http, order["id"]))["status"] == "PAID"
    assert not [r for r in await client.admin("GET", "/outbox/failed") if r["order_id"] == order["id"]]
    assert (await asyncio.to_thread(run_checks, settings, 30.0)).exit_code == 0
