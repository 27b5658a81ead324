"""TCC orders driven by the replicated coordinator, on real processes: the happy path and refusals, the
leader dying at each step (a crash fault, kill -9 under load, an isolated leader), a Try held until after its
Cancel, a Confirm that fails then succeeds, a transaction STUCK until an operator retries it, and bad input.
Each test ends with `txlab check` holding: nothing frozen or reserved without a live transaction.

What depends on the store (the records, leadership, failover) runs twice: with the coordinator's records in
its own Raft log, and in etcd (the etcd that scripts/local-services starts, or $TXLAB_ETCD); the driver's own
rules run on the Raft store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import httpx
import psycopg
import pytest

from services.checker import check_coordinated, run_checks
from services.coordinator.client import leading_replica
from services.coordinator.model import FINAL_STATES, STUCK
from services.demo import Client
from tests.polling import eventually

from .conftest import PLAN, admin_client, own_settings, place, seeded_system, settled, statuses, transaction

SKUS = [sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock]  # not the scarce ones
RICH = [cid for cid, _, balance in PLAN.customer_rows() if balance == PLAN.balance_cents]
CHEAPEST = min(PLAN.catalogue(), key=lambda row: row[2])[0]  # 1,001 of it: more than the stock, but affordable

TIMINGS = {"tcc_deadline_seconds": 2.0, "coordinator_retry_base_seconds": 0.05,
           "coordinator_retry_cap_seconds": 0.4, "coordinator_max_attempts": 4}


ETCD = os.environ.get("TXLAB_ETCD", "127.0.0.1:2379")


def etcd_answers() -> bool:
    host, _, port = ETCD.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
        return True
    return False


STORES = {"raft": "raft", "etcd": f"etcd://{ETCD}"}
# what depends on the store (leadership, failover, the records) runs on both; the driver's own rules on one
BOTH_STORES = pytest.mark.parametrize("settings", list(STORES.values()), ids=list(STORES), indirect=True,
                                      scope="module")
RAFT_STORE = pytest.mark.parametrize("settings", ["raft"], ids=["raft"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def settings(request, servers, tmp_path_factory):
    if request.param != "raft" and not etcd_answers():
        pytest.fail(f"etcd is not answering on {ETCD}: run scripts/local-services (it installs and starts it)")
    with own_settings(servers, tmp_path_factory, "tcc-orders",
                      coordinator_store=request.param, **TIMINGS) as s:
        yield s


@pytest.fixture(scope="module")
async def system(settings):
    async with seeded_system(settings, coordinator=True) as sup:
        yield sup


@pytest.fixture
async def admin(settings, system):
    async with admin_client(settings) as http:
        yield http
        for path in ("/faults", "/coordinator/isolate"):  # retried while a replica restarts

            async def cleared(path: str = path) -> bool:
                return (await http.delete(path)).status_code == 200

            await eventually(cleared, within=60.0, what=f"DELETE {path}")
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, [(i.name, i.violations, i.counts) for i in report.invariants if not i.holds]


@pytest.fixture
async def client(settings, system):
    client = Client(settings, retry_for=60.0)
    yield client
    await client.aclose()


def body(n: int, qty: int = 1, sku: str | None = None) -> dict:
    return {"customer_id": RICH[n % len(RICH)], "pattern": "tcc",
            "items": [{"sku": sku or SKUS[n % len(SKUS)], "qty": qty}]}










async def leader(settings, after_term: int | None = None) -> tuple[int, int]:
    """(node, term) of the caught-up leader (in a term after `after_term`)."""
    async with httpx.AsyncClient() as http:
        status = await leading_replica(settings, http, after_term)
    return status["id"], status["term"]


@BOTH_STORES
async def test_orders_are_paid_or_cancelled_and_agree_with_their_transactions(settings, admin, client):
    ids = await place(client, [body(n) for n in range(12)] + [body(12, qty=PLAN.stock + 1, sku=CHEAPEST)])
    final = await settled(settings, ids)
    assert list(final.values()).count("PAID") == 12 and final[ids[-1]] == "CANCELLED"
    paid = await transaction(admin, ids[0])
    assert paid["state"] == "CONFIRMED" and paid["decision"] == "commit"
    assert {b["state"] for b in paid["branches"].values()} == {"CONFIRMED"}
    cancelled = await transaction(admin, ids[-1])
    assert cancelled["state"] == "CANCELLED" and "not enough stock" in cancelled["reason"]
    assert cancelled["branches"]["inventory"]["outcome"] == "REJECTED"
    assert cancelled["branches"]["payment"]["timeline"][-1][1] == "cancel: CANCELLED"  # the frozen money back
    listing = (await admin.get("/transactions", params={"pattern": "tcc", "state": "CANCELLED"})).json()
    assert ids[-1] in [t["gid"] for t in listing["items"]]


@BOTH_STORES
@pytest.mark.parametrize("step", ["after_try", "after_decision"])
async def test_the_leader_crashing_at_each_step_loses_nothing(settings, system, admin, client, step):
    before, _ = await leader(settings)
    restarts = sum(c.restarts for c in system.children.values())
    await client.admin("POST", "/faults", json={"point": f"coordinator.tcc.{step}", "action": "crash",
                                              "times": 1})
    ids = await place(client, [body(n) for n in range(6)])
    await settled(settings, ids)
    fired = {f["point"]: f["fired"] for f in await client.admin("GET", "/faults")}  # retried while one restarts
    assert fired[f"coordinator.tcc.{step}"] == 1
    assert sum(c.restarts for c in system.children.values()) == restarts + 1
    assert system.children[f"coordinator-{before}"].restarts >= 1  # the leader was the one that died
    for gid in ids:
        assert (await transaction(admin, gid))["state"] in ("CONFIRMED", "CANCELLED")


@BOTH_STORES
async def test_kill_9_of_the_leader_under_load_loses_no_transaction(settings, system, admin, client):
    async def kill_leader_soon() -> tuple[int, int]:
        await asyncio.sleep(0.3)
        victim, term = await leader(settings)
        await system.kill(f"coordinator-{victim}")
        return victim, term

    placing = asyncio.create_task(place(client, [body(n) for n in range(30)]))
    victim, term = await kill_leader_soon()
    ids = await placing
    await settled(settings, ids)
    await leader(settings, after_term=term)  # a new leadership (the victim, restarted, may win it)
    assert system.children[f"coordinator-{victim}"].restarts >= 1
    states = [(await transaction(admin, gid))["state"] for gid in ids]
    assert set(states) <= {"CONFIRMED", "CANCELLED"}  # which, depends on the failover's length: not asserted


@RAFT_STORE
async def test_a_try_held_past_the_deadline_arrives_after_its_cancel_and_holds_nothing(settings, admin, client):
    # every Try held (not `times=1`: a leader elected meanwhile sends the Try again, and that one is held too)
    await client.admin("POST", "/faults", json={"point": "coordinator.tcc.hold_try", "action": "delay",
                                              "delay_ms": 3_500})
    (gid,) = await place(client, [body(1)])
    assert (await settled(settings, [gid]))[gid] == "CANCELLED"
    record = await transaction(admin, gid)
    assert "deadline passed" in record["reason"]
    assert [b["outcome"] for b in record["branches"].values()] == [None, None]

    def barrier() -> dict[str, dict[str, str]]:
        found = {}
        for held in ("inventory", "payment"):
            with psycopg.connect(settings.raw_dsn(held)) as conn:
                found[held] = dict(conn.execute("SELECT op, outcome FROM tcc_barrier WHERE gid = %s",
                                                (gid,)).fetchall())
        return found

    prevented = {"try": "PREVENTED", "cancel": "EMPTY_ROLLBACK"}
    assert barrier() == {"inventory": prevented, "payment": prevented}  # each Cancel came first
    await asyncio.sleep(2.5)  # the held Tries are delivered now: the barrier makes them reserve nothing
    assert barrier() == {"inventory": prevented, "payment": prevented}


@RAFT_STORE
async def test_a_failing_confirm_is_retried_until_it_succeeds(settings, admin, client):
    await client.admin("POST", "/faults", json={"point": "payment.tcc.confirm", "action": "error",
                                              "times": 2})
    (gid,) = await place(client, [body(2)])
    assert (await settled(settings, [gid]))[gid] == "PAID"
    record = await transaction(admin, gid)
    assert record["retries"] == 2 and record["branches"]["payment"]["state"] == "CONFIRMED"
    assert [t for _, t in record["branches"]["payment"]["timeline"] if t.startswith("attempt")] == [
        "attempt 1 failed: payment answered confirm with 503: {\"detail\":\"injected error at payment.tcc.confirm\"}",
        "attempt 2 failed: payment answered confirm with 503: {\"detail\":\"injected error at payment.tcc.confirm\"}"]


@RAFT_STORE
async def test_a_transaction_failing_past_the_limit_is_stuck_until_an_operator_retries(settings, admin, client):
    await client.admin("POST", "/faults", json={"point": "inventory.tcc.confirm", "action": "error"})
    (gid,) = await place(client, [body(3)])

    async def stuck() -> list[dict]:
        return (await admin.get("/transactions", params={"state": "STUCK"})).json()["items"]

    (record,) = await eventually(stuck, within=30.0, what="a STUCK transaction")
    assert record["gid"] == gid and record["branches"]["inventory"]["attempts"] == TIMINGS["coordinator_max_attempts"]
    assert statuses(settings, [gid])[gid] == "PENDING"
    await admin.delete("/faults")
    retried = await admin.post(f"/transactions/{gid}/retry")
    assert retried.status_code == 200 and retried.json()["state"] == "CONFIRMING"
    assert (await settled(settings, [gid]))[gid] == "PAID"
    assert (await admin.post(f"/transactions/{gid}/retry")).status_code == 409  # final: nothing to retry


@BOTH_STORES
async def test_an_isolated_leader_is_replaced_and_orders_go_on(settings, admin, client):
    old, term = await leader(settings)
    assert (await admin.post(f"/coordinator/isolate/{old}")).status_code == 200
    new, _ = await leader(settings, after_term=term)

    async def stepped_down() -> bool:  # until then it takes begins it can never commit (they miss a 2 s deadline)
        async with httpx.AsyncClient(timeout=2.0) as http:
            return (await http.get(f"{settings.url(f'coordinator-{old}')}/raft/status")).json()["role"] != "leader"

    await eventually(stepped_down, within=30, what=f"replica {old}, cut off, stepping down")
    ids = await place(client, [body(n) for n in range(5)])
    assert set((await settled(settings, ids)).values()) == {"PAID"}
    assert (await admin.delete("/coordinator/isolate")).status_code == 200
    assert new != old


@BOTH_STORES
async def test_bad_input_changes_nothing(settings, admin):
    unknown = str(uuid.uuid4())
    assert (await admin.get(f"/transactions/{unknown}")).status_code == 404
    assert (await admin.post(f"/transactions/{unknown}/retry")).status_code == 404
    assert (await admin.get("/transactions", params={"state": "LOST"})).status_code == 422
    assert (await admin.post("/coordinator/isolate/9")).status_code == 404
    before = (await admin.get("/transactions")).json()["total"]
    token = {"Authorization": f"Bearer {settings.admin_token}"}
    lead, _ = await leader(settings)
    follower = next(i for i in range(1, settings.coordinator_nodes + 1) if i != lead)
    async with httpx.AsyncClient(timeout=10.0) as http:
        url = settings.url(f"coordinator-{lead}")
        for bad in ({}, {"gid": "g", "pattern": "saga", "branches": [{"branch": "payment"}], "deadline_ms": 1},
                    {"gid": "g", "pattern": "tcc", "branches": [{"branch": "bank"}], "deadline_ms": 1},
                    {"gid": "g g", "pattern": "tcc", "branches": [{"branch": "payment"}], "deadline_ms": 1}):
            assert (await http.post(f"{url}/transactions", json=bad, headers=token)).status_code == 422
        assert (await http.post(f"{url}/transactions", content=b"{", headers=token)).status_code == 422
        assert (await http.get(f"{url}/transactions")).status_code == 401
        moved = await http.get(f"{settings.url(f'coordinator-{follower}')}/transactions", headers=token)
        assert moved.status_code == 307 and moved.headers["location"] == f"{url}/transactions"
    assert (await admin.get("/transactions")).json()["total"] == before


@RAFT_STORE
async def test_a_transaction_begun_by_hand_whose_try_is_refused_aborts_at_once_and_ends(settings, admin):
    """A token holder begins a transaction with no order behind it, and a branch body the participant refuses
    (422). The refusal is an answer: the transaction aborts at once, naming it (it was asked again until the
    deadline, then blamed on the deadline); and the order service's 404 to its report ends it (it went STUCK,
    and `txlab check` failed until a reseed)."""
    import time

    gid = f"by-hand-{uuid.uuid4().hex[:8]}"
    lead, _ = await leader(settings)
    async with httpx.AsyncClient(timeout=10.0) as http:
        begun = await http.post(f"{settings.url(f'coordinator-{lead}')}/transactions", json={
            "gid": gid, "pattern": "tcc", "deadline_ms": int((time.time() + 30) * 1000),
            "branches": [{"branch": "inventory", "order_id": str(uuid.uuid4()), "items": "garbage"}]},
            headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert begun.status_code == 201, begun.text
    record = await eventually(lambda: _final(admin, gid), within=20.0, what="the transaction ends")
    assert record["decision"] == "abort" and record["state"] != "STUCK", record
    assert "refused by inventory" in record["reason"] and "422" in record["reason"], record["reason"]


async def _final(admin: httpx.AsyncClient, gid: str) -> dict | None:
    record = await transaction(admin, gid)
    return record if record["state"] in FINAL_STATES | {STUCK} else None


@RAFT_STORE
async def test_the_checker_names_money_frozen_without_a_live_transaction(settings, admin):
    gid = f"ghost-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.raw_dsn("payment"), autocommit=True) as conn:
        conn.execute("INSERT INTO tcc_barrier (gid, branch, op, outcome, held) VALUES (%s, 'payment', 'try', "
                     "'FROZEN', true)", (gid,))
        try:
            inv = await asyncio.to_thread(check_coordinated, settings)
        finally:
            conn.execute("DELETE FROM tcc_barrier WHERE gid = %s", (gid,))
    assert not inv.holds
    assert inv.violations == [f"money frozen by {gid} (branch payment) without a live transaction (unknown to the "
                              "coordinator)"]
