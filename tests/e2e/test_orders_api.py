"""POST /orders end to end: bad input changes nothing, Idempotency-Key, PAID and both compensations."""

import asyncio

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from services.checker import run_checks

from .conftest import PLAN

SCARCE = next(sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.scarce_stock)
PLENTY = next(sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock)
POOR = next(cid for cid, _, bal in PLAN.customer_rows() if bal == PLAN.poor_balance_cents)
RICH = next(cid for cid, _, bal in PLAN.customer_rows() if bal == PLAN.balance_cents)


async def count_orders(http) -> int:
    return len((await http.get("/orders", params={"limit": 1000})).json())


async def final(http, order_id: str, within: float = 30.0) -> dict:
    for _ in range(int(within / 0.1)):
        order = (await http.get(f"/orders/{order_id}")).json()
        if order["status"] != "PENDING":
            return order
        await asyncio.sleep(0.1)
    raise AssertionError(f"order {order_id} still PENDING after {within}s")


@pytest.mark.parametrize("body, status, message", [
    ({"customer_id": RICH, "items": []}, 422, "at least 1 item"),
    ({"customer_id": RICH, "items": [{"sku": "no-such-sku", "qty": 1}]}, 422, "unknown sku"),
    ({"customer_id": "nobody", "items": [{"sku": PLENTY, "qty": 1}]}, 422, "unknown customer"),
    ({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 0}]}, 422, "greater than or equal to 1"),
    ({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": -3}]}, 422, "greater than or equal to 1"),
    ({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}, {"sku": PLENTY, "qty": 2}]}, 422, "appears twice"),
    ({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}], "pattern": "magic"}, 422, "not available"),
    ({"items": [{"sku": PLENTY, "qty": 1}]}, 422, "customer_id"),
    ({"customer_id": RICH, "items": [{"sku": PLENTY, "qty": "many"}]}, 422, "valid integer"),
    ({"customer_id": RICH, "items": [{"sku": "x" * 70_000, "qty": 1}]}, 413, "larger than"),
    ({"customer_id": RICH, "items": [{"sku": "bad\u0000sku", "qty": 1}]}, 422, "pattern"),
    ({"customer_id": "nul\u0000", "items": [{"sku": PLENTY, "qty": 1}]}, 422, "pattern"),
])
async def test_bad_order_gets_a_4xx_with_a_clear_message_and_creates_nothing(http, body, status, message):
    before = await count_orders(http)
    response = await http.post("/orders", json=body)
    assert response.status_code == status
    assert message in response.text
    assert await count_orders(http) == before


async def test_lone_surrogates_nul_bytes_and_odd_tokens_are_4xx_not_500(settings, http):
    surrogate = b'{"customer_id": "c", "items": [{"sku": "\\ud800", "qty": 1}]}'
    assert (await http.post("/orders", content=surrogate, headers={"content-type": "application/json"})
            ).status_code == 422
    async with httpx.AsyncClient(timeout=5.0) as raw:
        assert (await raw.get(f"{settings.url('inventory')}/products/a%00b")).status_code == 422
        assert (await raw.get(f"{settings.url('inventory')}/products", params={"sku": "a\x00b"})).status_code == 422
        assert (await raw.get(f"{settings.url('payment')}/customers/a%00b")).status_code == 422
        odd = {"authorization": b"Bearer caf\xc3\xa9"}
        assert (await raw.get(f"{settings.url('admin')}/faults", headers=odd)).status_code == 401
        assert (await raw.get(f"{settings.url('admin')}/docs")).status_code == 404


async def test_malformed_json_and_bad_ids_are_4xx_not_500(http):
    assert (await http.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
            ).status_code == 422
    assert (await http.get("/orders/not-a-uuid")).status_code == 422
    assert (await http.get("/orders/00000000-0000-0000-0000-000000000000")).status_code == 404
    assert (await http.get("/orders", params={"status": "WEIRD"})).status_code == 422


async def test_admin_api_answers_401_without_the_token(settings, system):
    async with httpx.AsyncClient(base_url=settings.url("admin"), timeout=5.0) as admin:
        for method, path in [("GET", "/faults"), ("GET", "/faults/points"), ("POST", "/faults"),
                             ("DELETE", "/faults"), ("GET", "/invariants"), ("GET", "/outbox/failed")]:
            assert (await admin.request(method, path)).status_code == 401
            wrong = await admin.request(method, path, headers={"authorization": "Bearer wrong"})
            assert wrong.status_code == 401
    for service in ("order", "inventory", "payment"):
        async with httpx.AsyncClient(base_url=settings.url(service), timeout=5.0) as svc:
            assert (await svc.post("/internal/faults", json={})).status_code == 401


async def test_admin_refuses_bad_fault_arming_with_a_reason(client):
    for body, message in [({"point": "nowhere", "action": "crash"}, "unknown fault point"),
                          ({"point": "bus.publish", "action": "crash"}, "supports"),
                          ({"point": "relay.after_publish", "action": "crash", "service": "admin"}, "exists only in")]:
        with pytest.raises(httpx.HTTPStatusError) as err:
            await client.admin("POST", "/faults", json=body)
        assert err.value.response.status_code == 422 and message in err.value.response.text
    assert await client.admin("GET", "/faults") == []


async def test_retried_request_with_the_same_idempotency_key_returns_the_same_order(http):
    body = {"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 1}]}
    first = await http.post("/orders", json=body, headers={"Idempotency-Key": "retry-me"})
    again = await http.post("/orders", json=body, headers={"Idempotency-Key": "retry-me"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = await http.post("/orders", json={**body, "items": [{"sku": PLENTY, "qty": 2}]},
                            headers={"Idempotency-Key": "retry-me"})
    assert other.status_code == 422 and "different request" in other.text


async def test_order_with_stock_and_money_is_paid_and_its_stock_sold(http, settings):
    order = (await http.post("/orders", json={"customer_id": RICH, "items": [{"sku": PLENTY, "qty": 2}]})).json()
    done = await final(http, order["id"])
    assert (done["status"], done["stock_status"], done["payment_status"]) == ("PAID", "RESERVED", "CHARGED")


async def test_insufficient_stock_cancels_the_order_and_refunds_the_charge(http):
    order = (await http.post("/orders", json={"customer_id": RICH,
                                              "items": [{"sku": SCARCE, "qty": PLAN.scarce_stock + 1}]})).json()
    done = await final(http, order["id"])
    assert done["status"] == "CANCELLED" and "insufficient stock" in done["reason"]
    for _ in range(100):
        done = (await http.get(f"/orders/{order['id']}")).json()
        if done["payment_status"] == "REFUNDED":
            break
        await asyncio.sleep(0.1)
    assert (done["stock_status"], done["payment_status"]) == ("REJECTED", "REFUNDED")


async def test_insufficient_balance_cancels_the_order_and_releases_the_stock(http):
    order = (await http.post("/orders", json={"customer_id": POOR, "items": [{"sku": PLENTY, "qty": 3}]})).json()
    assert order["total_cents"] > PLAN.poor_balance_cents
    done = await final(http, order["id"])
    assert done["status"] == "CANCELLED" and "insufficient balance" in done["reason"]
    for _ in range(100):
        done = (await http.get(f"/orders/{order['id']}")).json()
        if done["stock_status"] == "RELEASED":
            break
        await asyncio.sleep(0.1)
    assert (done["stock_status"], done["payment_status"]) == ("RELEASED", "FAILED")


async def test_invariants_hold_after_the_api_tests(settings, system):
    report = await asyncio.to_thread(run_checks, settings, 30.0)
    assert report.exit_code == 0, report.to_dict()


SCALAR = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
          | st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(SCALAR,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
ITEM = st.fixed_dictionaries({}, optional={"sku": st.sampled_from([PLENTY, SCARCE]) | JSON,
                                           "qty": st.integers(-5, 20_000) | JSON})
BODY = st.fixed_dictionaries({}, optional={"customer_id": st.sampled_from([RICH, POOR]) | JSON,
                                           "items": st.lists(ITEM, max_size=4) | JSON,
                                           "pattern": st.sampled_from(["outbox", "tcc"]) | JSON}) | JSON


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(body=BODY)
def test_no_request_body_makes_post_orders_answer_500(settings, system, body):
    response = httpx.post(f"{settings.url('order')}/orders", json=body, timeout=10.0)
    assert response.status_code in (200, 201, 413, 422), response.text
