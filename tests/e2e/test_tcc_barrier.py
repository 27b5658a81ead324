"""The TCC participants' barrier on the real processes: idempotency, empty rollback, anti-hanging, Try and
Cancel racing, a Confirm that fails then succeeds on retry, and refusals that change nothing. After each,
the stock and money invariants hold (frozen money counted) and nothing is left held."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from services.checker import check_money, check_stock
from services.common.faults import parse_spec
from services.demo import Client

from .conftest import PLAN, own_system

SKU = PLAN.catalogue()[0][0]
CUSTOMER = PLAN.customer_rows()[0][0]


settings, system = own_system("tcc")


@pytest.fixture
async def tcc(settings, system):
    async with httpx.AsyncClient(timeout=20.0, headers={"Authorization": f"Bearer {settings.admin_token}"}) as http:

        async def call(service: str, op: str, **body) -> httpx.Response:
            return await http.post(f"{settings.url(service)}/internal/tcc/{op}", json=body)

        yield call
    for inv in (check_stock(settings), check_money(settings)):
        assert inv.holds, inv.violations


def branch_body(service: str, gid: str, qty: int = 2, amount: int = 500) -> dict:
    if service == "inventory":
        return {"gid": gid, "branch": "inventory", "order_id": str(uuid.uuid4()),
                "items": [{"sku": SKU, "qty": qty}]}
    return {"gid": gid, "branch": "payment", "order_id": str(uuid.uuid4()), "customer_id": CUSTOMER,
            "amount_cents": amount}


async def held(settings, service: str) -> int:
    """Stock reserved, or money frozen, right now."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        if service == "inventory":
            return (await http.get(f"{settings.url('inventory')}/products", params={"sku": SKU})).json()[0]["reserved"]
    import psycopg

    with psycopg.connect(settings.raw_dsn("payment")) as conn:
        return conn.execute("SELECT frozen_cents FROM customers WHERE id = %s", (CUSTOMER,)).fetchone()[0]


@pytest.mark.parametrize("service", ["inventory", "payment"])
async def test_a_repeated_confirm_does_nothing_the_second_time(tcc, settings, service):
    gid = f"g-{uuid.uuid4().hex[:8]}"
    body = branch_body(service, gid)
    tried = await tcc(service, "try", **body)
    assert tried.status_code == 200 and tried.json()["outcome"] in ("RESERVED", "FROZEN")
    assert await held(settings, service) > 0
    again = await tcc(service, "try", **body)
    assert again.json() == {"outcome": tried.json()["outcome"], "ready": True, "repeated": True}
    first = await tcc(service, "confirm", gid=gid, branch=service)
    assert first.json() == {"outcome": "CONFIRMED"}
    second = await tcc(service, "confirm", gid=gid, branch=service)
    assert second.status_code == 200 and second.json() == {"outcome": "CONFIRMED", "repeated": True}
    assert await held(settings, service) == 0  # settled once: nothing held, sold or captured once (invariants)


@pytest.mark.parametrize("service", ["inventory", "payment"])
async def test_cancel_before_try_is_an_empty_rollback_and_the_late_try_holds_nothing(tcc, settings, service):
    gid = f"g-{uuid.uuid4().hex[:8]}"
    cancelled = await tcc(service, "cancel", gid=gid, branch=service)
    assert cancelled.json() == {"outcome": "EMPTY_ROLLBACK"}
    late = await tcc(service, "try", **branch_body(service, gid))
    assert late.status_code == 200 and late.json()["outcome"] == "SKIPPED"
    assert await held(settings, service) == 0
    assert (await tcc(service, "cancel", gid=gid, branch=service)).json() == {"outcome": "EMPTY_ROLLBACK",
                                                                             "repeated": True}
    refused = await tcc(service, "confirm", gid=gid, branch=service)
    assert refused.status_code == 409 and "PREVENTED" in refused.text


@pytest.mark.parametrize("service", ["inventory", "payment"])
async def test_try_and_cancel_racing_are_decided_by_the_key(tcc, settings, service):
    outcomes = []
    for _ in range(15):
        gid = f"g-{uuid.uuid4().hex[:8]}"
        tried, cancelled = await asyncio.gather(tcc(service, "try", **branch_body(service, gid, qty=1, amount=10)),
                                                tcc(service, "cancel", gid=gid, branch=service))
        pair = (tried.json()["outcome"], cancelled.json()["outcome"])
        assert pair in {("RESERVED", "CANCELLED"), ("FROZEN", "CANCELLED"), ("SKIPPED", "EMPTY_ROLLBACK")}, pair
        outcomes.append(pair[1])
    assert await held(settings, service) == 0  # whichever won, nothing is left held


async def test_a_confirm_that_fails_succeeds_on_retry(tcc, settings):
    client = Client(settings, retry_for=30.0)
    try:
        await client.admin("POST", "/faults", json=parse_spec("payment.tcc.confirm=error,times=1").request())
        gid = f"g-{uuid.uuid4().hex[:8]}"
        assert (await tcc("payment", "try", **branch_body("payment", gid))).json()["outcome"] == "FROZEN"
        failed = await tcc("payment", "confirm", gid=gid, branch="payment")
        assert failed.status_code == 503
        assert await held(settings, "payment") == 500  # the failed Confirm changed nothing
        retried = await tcc("payment", "confirm", gid=gid, branch="payment")
        assert retried.json() == {"outcome": "CONFIRMED"}
        assert await held(settings, "payment") == 0
    finally:
        await client.admin("DELETE", "/faults")
        await client.aclose()


async def test_refusals_change_nothing(tcc, settings):
    gid = f"g-{uuid.uuid4().hex[:8]}"
    poor = await tcc("payment", "try", **branch_body("payment", gid, amount=10**11))
    assert poor.status_code == 200 and poor.json()["outcome"] == "REFUSED" and "cannot pay" in poor.json()["why"]
    confirm = await tcc("payment", "confirm", gid=gid, branch="payment")
    assert confirm.status_code == 409 and "REFUSED" in confirm.text
    unknown = await tcc("inventory", "confirm", gid=f"never-{gid}", branch="inventory")
    assert unknown.status_code == 409 and "never arrived" in unknown.text
    scarce = await tcc("inventory", "try", **branch_body("inventory", f"s-{gid}", qty=10_000))
    assert scarce.json()["outcome"] == "REJECTED"
    for bad in ({"gid": gid}, {"gid": gid, "branch": "elsewhere"}, {"gid": "", "branch": "payment"},
                {"gid": gid, "branch": "payment", "extra": 1}):
        assert (await tcc("payment", "confirm", **bad)).status_code == 422
    assert (await tcc("inventory", "try", **(branch_body("inventory", gid) | {"items": []}))).status_code == 422
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.post(f"{settings.url('payment')}/internal/tcc/try",
                                     json=branch_body("payment", gid))).status_code == 401
    assert await held(settings, "payment") == 0 and await held(settings, "inventory") == 0
