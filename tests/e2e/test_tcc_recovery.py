"""A tcc order placed while no coordinator replica runs: it is recorded PENDING and answered 202 (never a 5xx
that a client would retry as "not placed"); once the coordinator is up, the order service's recovery loop
begins its transaction, with the deadline counted from the order's creation, and the order is settled (here
cancelled, its deadline having passed meanwhile), with `txlab check` holding."""

from __future__ import annotations

import asyncio

import httpx

from services.checker import run_checks
from services.supervisor import Supervisor
from tests.polling import eventually

from .conftest import PLAN, own_system

settings, system = own_system("tcc-recovery")  # the services only: no coordinator yet


async def test_an_order_placed_while_the_coordinator_is_down_is_settled_once_it_is_up(settings, system):
    rich = next(cid for cid, _, balance in PLAN.customer_rows() if balance == PLAN.balance_cents)
    sku = next(sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock)
    async with httpx.AsyncClient(base_url=settings.url("order"), timeout=30.0) as http:
        placed = await http.post("/orders", json={"customer_id": rich, "pattern": "tcc",
                                                   "items": [{"sku": sku, "qty": 1}]},
                                 headers={"Idempotency-Key": "recovery-1"})
        assert placed.status_code == 202, placed.text
        order = placed.json()
        assert order["status"] == "PENDING" and "could not be begun yet" in order["note"]
        again = await http.post("/orders", json={"customer_id": rich, "pattern": "tcc",
                                                  "items": [{"sku": sku, "qty": 1}]},
                                headers={"Idempotency-Key": "recovery-1"})
        assert again.status_code == 200 and again.json()["id"] == order["id"]  # one order, not two

        async with Supervisor(settings, names=settings.coordinators):

            async def settled() -> str | None:
                status = (await http.get(f"/orders/{order['id']}")).json()["status"]
                return status if status != "PENDING" else None

            # begun past its deadline (the POST waited 8 s for a replica; the deadline is 5 s): cancelled at once,
            # the Tries skipped or undone, as such an order must end
            assert await eventually(settled, within=60.0, what="the order settled") == "CANCELLED"
            assert "deadline passed" in (await http.get(f"/orders/{order['id']}")).json()["reason"]
            report = await asyncio.to_thread(run_checks, settings, 60.0)
        assert report.exit_code == 0, report.to_dict()
