"""Each famous failure of the outbox flow, injected into the running processes: the run converges and the
invariants hold, so no effect was lost or applied twice."""

import asyncio
import zlib

import httpx
import pytest

from services.checker import check_convergence, run_checks
from services.common.faults import CRASH_EXIT_CODE, POINTS, parse_spec
from services.demo import order_bodies

from .conftest import PLAN

ORDERS = 12

CRASHES = [
    ("order.after_local_commit=crash,times=1", ["order"]),
    ("relay.before_publish=crash,times=1", ["order", "inventory", "payment"]),
    ("relay.after_publish=crash,times=1", ["order", "inventory", "payment"]),
    ("order.before_commit=crash,times=1", ["order"]),
    ("inventory.before_commit=crash,times=1", ["inventory"]),
    ("payment.before_commit=crash,times=1", ["payment"]),
    ("bus.deliver=crash,times=1", ["order", "inventory", "payment"]),
]
DUPLICATES = ["bus.publish=duplicate", "bus.deliver=duplicate"]
ERRORS = ["payment.before_commit=error,times=8", "inventory.before_commit=error,p=0.5",
          "relay.before_publish=error,times=3"]


async def stats(settings, token) -> dict[str, int]:
    total: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=5.0) as http:
        for service in ("order", "inventory", "payment"):
            r = await http.get(f"{settings.url(service)}/internal/stats",
                               headers={"authorization": f"Bearer {token}"})
            for k, v in r.json().items():
                total[k] = total.get(k, 0) + v
    return total


async def run_orders_under(spec: str, client, settings, system, seed: int, whole_run: bool = False) -> dict[str, int]:
    """Arm `spec`, place orders, disarm once it fired (or, with `whole_run`, once every event of the orders
    went through it); return fired counts per service."""
    await client.admin("POST", "/faults", json=parse_spec(spec).request())
    bodies = order_bodies(PLAN, ORDERS, "outbox", seed)
    statuses = await asyncio.gather(*(client.place(b) for b in bodies))
    assert all(code in (200, 201) for code, _ in statuses)
    if whole_run:
        await asyncio.to_thread(check_convergence, settings, 60.0)
    for _ in range(300):  # the orders' events are still flowing: wait until the fault met one
        fired = {svc: n for a in await client.admin("GET", "/faults") for svc, n in a["services"].items()}
        if any(fired.values()):
            break
        await asyncio.sleep(0.1)
    await client.admin("DELETE", "/faults")
    await system.wait_healthy(60)
    return fired


@pytest.mark.parametrize("spec, crashing", CRASHES, ids=[s.split("=")[0] for s, _ in CRASHES])
async def test_outbox_flow_converges_with_invariants_after_a_crash_at(spec, crashing, client, settings, system):
    restarts = {name: system.children[name].restarts for name in crashing}
    fired = await run_orders_under(spec, client, settings, system, seed=zlib.crc32(spec.encode()) % 1000)
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, report.to_dict()
    assert any(fired.values()), f"{spec} never fired: {fired}"
    crashed = [n for n in crashing if system.children[n].restarts > restarts[n]]
    assert crashed, f"no process restarted after {spec}"
    assert all(system.children[n].exits[-1] == 86 for n in crashed)


async def test_a_crash_armed_in_every_service_with_times_1_crashes_one_process_in_all(client, settings, system):
    spec = "relay.after_publish=crash,times=1"
    names = POINTS["relay.after_publish"].services
    assert len(names) == 3  # the admin API fans the arming out to all three services
    exits = {n: len(system.children[n].exits) for n in names}
    restarts = sum(system.children[n].restarts for n in names)
    fired = await run_orders_under(spec, client, settings, system, seed=zlib.crc32(b"times across processes") % 1000,
                                   whole_run=True)
    crashes = {n: system.children[n].exits[exits[n]:] for n in names}
    assert sum(system.children[n].restarts for n in names) - restarts == 1, crashes
    assert sum(codes.count(CRASH_EXIT_CODE) for codes in crashes.values()) == 1, crashes
    assert sum(fired.values()) == 1, fired
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, report.to_dict()


@pytest.mark.parametrize("spec", DUPLICATES)
async def test_duplicate_delivery_is_absorbed_by_the_inbox(spec, client, settings, system):
    before = await stats(settings, settings.admin_token)
    await run_orders_under(spec, client, settings, system, seed=zlib.crc32(spec.encode()) % 1000, whole_run=True)
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, report.to_dict()
    after = await stats(settings, settings.admin_token)
    skipped = after.get("duplicates_skipped", 0) - before.get("duplicates_skipped", 0)
    applied = after.get("events_applied", 0) - before.get("events_applied", 0)
    assert skipped >= ORDERS, f"expected every order's events duplicated, {skipped} duplicates skipped"
    assert applied >= ORDERS * 4, "each order's events were applied once"


@pytest.mark.parametrize("spec", ERRORS)
async def test_repeated_errors_delay_events_but_never_lose_or_park_them(spec, client, settings, system):
    fired = await run_orders_under(spec, client, settings, system, seed=zlib.crc32(spec.encode()) % 1000,
                                   whole_run=True)
    assert any(fired.values()), f"{spec} never fired"
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, report.to_dict()
