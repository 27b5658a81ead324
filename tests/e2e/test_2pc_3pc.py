"""2PC over PostgreSQL prepared transactions and 3PC, driven by the replicated coordinator, on real processes:
the happy paths and refusals, the coordinator leader crashing at each 2PC step, a participant crashing between
prepare and commit, the in-doubt sweeper (an orphan with our prefix ended, someone else's left alone), the
participants' routes answering repeats and late calls with their outcome, 3PC's participant timeouts, and last
the partition that makes 3PC inconsistent while 2PC under the same fault stays consistent.

Every test but the last ends with `txlab check` holding and no prepared transaction of ours left."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg
import pytest

from services.checker import run_checks
from services.coordinator.client import leading_replica
from services.demo import Client
from tests.polling import eventually

from .conftest import PLAN, admin_client, own_system, place, settled, transaction

SKUS = [sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock]
RICH = [cid for cid, _, balance in PLAN.customer_rows() if balance == PLAN.balance_cents]
CHEAPEST = min(PLAN.catalogue(), key=lambda row: row[2])[0]  # 1,001 of it: more than the stock, but affordable

# the 3PC timeout is shorter than the in-doubt age, as everywhere; the phase-2 retries go on long enough for a
# partition to outlast the 3PC timeout
TIMINGS = {"tcc_deadline_seconds": 2.0, "coordinator_retry_base_seconds": 0.05, "coordinator_retry_cap_seconds": 0.4,
           "coordinator_max_attempts": 60, "indoubt_seconds": 3.0, "threepc_timeout_seconds": 2.5}


settings, system = own_system("xa", coordinator=True, **TIMINGS)


async def clear_faults(client: Client) -> None:
    await client.admin("DELETE", "/faults")  # retried while a replica restarts


@pytest.fixture
async def admin(settings, system, client):
    async with admin_client(settings) as http:
        yield http
    await clear_faults(client)
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, [(i.name, i.violations, i.counts) for i in report.invariants if not i.holds]
    assert prepared(settings) == {"inventory": [], "payment": []}


def prepared(settings, ours: bool = True) -> dict[str, list[str]]:
    found = {}
    for service in ("inventory", "payment"):
        with psycopg.connect(settings.raw_dsn(service)) as conn:
            found[service] = [r[0] for r in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND (gid LIKE 'txlab:%%') = %s",
                (ours,))]
    return found


def body(pattern: str, n: int, qty: int = 1, sku: str | None = None) -> dict:
    return {"customer_id": RICH[n % len(RICH)], "pattern": pattern,
            "items": [{"sku": sku or SKUS[n % len(SKUS)], "qty": qty}]}










async def participant(settings, service: str, path: str, payload: dict, token: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if token else {}
    async with httpx.AsyncClient(timeout=30.0) as http:
        return await http.post(f"{settings.url(service)}/internal/{path}", json=payload, headers=headers)


@pytest.mark.parametrize("pattern", ["2pc", "3pc"])
async def test_orders_are_paid_or_cancelled_and_agree_with_their_transactions(settings, admin, client, pattern):
    ids = await place(client, [body(pattern, n) for n in range(8)]
                      + [body(pattern, 8, qty=PLAN.stock + 1, sku=CHEAPEST)])
    final = await settled(settings, ids)
    assert list(final.values()).count("PAID") == 8 and final[ids[-1]] == "CANCELLED"
    paid = await transaction(admin, ids[0])
    assert (paid["pattern"], paid["state"], paid["decision"]) == (pattern, "COMMITTED", "commit")
    assert {b["state"] for b in paid["branches"].values()} == {"COMMITTED"}
    cancelled = await transaction(admin, ids[-1])
    assert cancelled["state"] == "ABORTED" and "not enough stock" in cancelled["reason"]
    if pattern == "3pc":  # refused at its vote: nothing was prepared, or even locked
        assert cancelled["branches"]["inventory"]["outcome"] == "VOTED_NO"
        assert any("every branch answered can-commit ready" in t for _, t in paid["timeline"])
    else:
        assert cancelled["branches"]["inventory"]["outcome"] == "REJECTED"
    listing = (await admin.get("/transactions", params={"pattern": pattern, "state": "COMMITTED"})).json()
    assert ids[0] in [t["gid"] for t in listing["items"]]


@pytest.mark.parametrize("step", ["after_prepare_one", "after_prepare_all", "after_decision", "after_first_commit"])
async def test_the_coordinator_leader_crashing_at_each_2pc_step_loses_nothing(settings, system, admin, client, step):
    async with httpx.AsyncClient() as http:
        before = (await leading_replica(settings, http))["id"]
    await client.admin("POST", "/faults", json={"point": f"coordinator.2pc.{step}", "action": "crash", "times": 1})
    ids = await place(client, [body("2pc", n) for n in range(4)])
    final = await settled(settings, ids)
    fired = {f["point"]: f["fired"] for f in await client.admin("GET", "/faults")}
    assert fired[f"coordinator.2pc.{step}"] == 1
    assert system.children[f"coordinator-{before}"].restarts >= 1  # the leader was the one that died
    for gid in ids:
        record = await transaction(admin, gid)
        assert record["state"] == ("COMMITTED" if final[gid] == "PAID" else "ABORTED"), record
    if step in ("after_decision", "after_first_commit"):  # decided before the crash: the new leader commits
        assert "PAID" in final.values()
        for gid in ids:  # one still in phase 1 when the leader died can miss its deadline during the election
            # (a loaded machine, two test lanes) and abort, by 2PC's rule: not a loss, and said so
            if final[gid] != "PAID":
                record = await transaction(admin, gid)
                assert "deadline passed" in (record["reason"] or ""), record


@pytest.mark.parametrize("service", ["inventory", "payment"])
async def test_a_participant_crashing_between_prepare_and_commit_commits_after_its_restart(settings, system, admin,
                                                                                        client, service):
    restarts = system.children[service].restarts
    await client.admin("POST", "/faults", json={"point": f"{service}.xa.commit", "action": "crash", "times": 1})
    (gid,) = await place(client, [body("2pc", 20)])
    assert (await settled(settings, [gid]))[gid] == "PAID"
    assert system.children[service].restarts == restarts + 1
    record = await transaction(admin, gid)
    assert any("failed" in text for _, text in record["branches"][service]["timeline"])  # the crash, retried


async def test_a_prepare_whose_answer_is_lost_is_retried_and_answered_as_the_first(settings, admin, client):
    await client.admin("POST", "/faults", json={"point": "payment.xa.prepare", "action": "error", "times": 1})
    (gid,) = await place(client, [body("2pc", 21)])
    assert (await settled(settings, [gid]))[gid] == "PAID"
    record = await transaction(admin, gid)
    assert record["branches"]["payment"]["outcome"] == "PREPARED"


def prepare_by_hand(settings, name: str, sku: str) -> None:
    """A prepared transaction holding a lock on a product, as a crashed coordinator's participant would."""
    hand_prepared(settings, "inventory", name,
                  ("UPDATE products SET available = available - 1, sold = sold + 1 WHERE sku = %s", (sku,)))


def hand_prepared(settings, service: str, name: str, statement: tuple[str, tuple]) -> None:
    conn = psycopg.connect(settings.raw_dsn(service))
    try:
        conn.tpc_begin(name)
        conn.execute(*statement)
        conn.tpc_prepare()
    finally:
        conn.close()  # the prepared transaction outlives its connection


def available(settings, sku: str) -> int:
    with psycopg.connect(settings.raw_dsn("inventory")) as conn:
        return conn.execute("SELECT available FROM products WHERE sku = %s", (sku,)).fetchone()[0]


async def test_the_sweeper_rolls_back_an_orphan_of_ours_and_leaves_anyone_elses(settings, admin, client):
    sku = SKUS[5]
    stock = available(settings, sku)
    orphan, foreign = f"txlab:{uuid.uuid4()}:inventory", f"someone-else:{uuid.uuid4()}"
    prepare_by_hand(settings, orphan, sku)
    hand_prepared(settings, "payment", foreign, ("SELECT 1", ()))  # someone else's, locking nothing of ours
    try:
        # older than TXLAB_INDOUBT_SECONDS, unknown to the coordinator: rolled back
        await eventually(lambda: orphan not in prepared(settings)["inventory"], within=30, interval=0.3,
                         what="the orphan rolled back")
        assert available(settings, sku) == stock  # its effect undone
        await asyncio.sleep(settings.indoubt_seconds + 1.0)  # several sweeps more
        assert prepared(settings, ours=False)["payment"] == [foreign]
    finally:
        with psycopg.connect(settings.raw_dsn("payment"), autocommit=True) as conn:
            conn.tpc_rollback(foreign)


async def test_the_participant_routes_answer_repeats_and_late_calls_with_their_outcome(settings, admin, client):
    gid, order = f"by-hand-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    work = {"gid": gid, "branch": "inventory", "order_id": order, "items": [{"sku": SKUS[6], "qty": 1}]}
    branch = {"gid": gid, "branch": "inventory"}
    # a rollback before the prepare: the late prepare then does nothing (it would hold locks for nobody)
    assert (await participant(settings, "inventory", "xa/rollback", branch)).json()["outcome"] == "ROLLED_BACK"
    late = await participant(settings, "inventory", "xa/prepare", work)
    assert late.status_code == 200 and late.json()["outcome"] == "SKIPPED" and late.json()["ready"] is False
    assert prepared(settings)["inventory"] == []
    # prepare, repeated; commit, repeated; a rollback after the commit answers COMMITTED
    other = {**work, "gid": gid + "-2"}
    first, again = [await participant(settings, "inventory", "xa/prepare", other) for _ in range(2)]
    assert first.json() == {"outcome": "PREPARED", "ready": True}
    assert again.json() == {"outcome": "PREPARED", "ready": True, "repeated": True}
    assert prepared(settings)["inventory"] == [f"txlab:{gid}-2:inventory"]
    done = [await participant(settings, "inventory", "xa/commit", {**branch, "gid": gid + "-2"}) for _ in range(2)]
    assert [d.json()["outcome"] for d in done] == ["COMMITTED", "COMMITTED"] and done[1].json()["repeated"]
    after = await participant(settings, "inventory", "xa/rollback", {**branch, "gid": gid + "-2"})
    assert after.status_code == 200 and after.json()["outcome"] == "COMMITTED"
    # a commit of a branch that never prepared is refused with the reason; bad input changes nothing
    never = await participant(settings, "inventory", "xa/commit", {**branch, "gid": gid + "-3"})
    assert never.status_code == 409 and "never prepared" in never.json()["detail"]
    assert (await participant(settings, "inventory", "xa/prepare", {**work, "items": []})).status_code == 422
    assert (await participant(settings, "inventory", "xa/commit", {"gid": gid})).status_code == 422
    assert (await participant(settings, "inventory", "xa/commit", branch, token=False)).status_code == 401
    # the stock the hand-made order took is its own: give it back, the checker knows no such order
    with psycopg.connect(settings.raw_dsn("inventory")) as conn:
        conn.execute("UPDATE products SET available = available + 1, sold = sold - 1 WHERE sku = %s", (SKUS[6],))
        conn.execute("DELETE FROM reservations WHERE order_id = %s", (order,))
        conn.execute("DELETE FROM tcc_barrier WHERE gid LIKE %s", (gid + "%",))


async def test_a_repeated_no_vote_gives_its_reason_again(settings):
    """The coordinator asks again when the first answer was lost: the user must still read why."""
    gid = f"by-hand-{uuid.uuid4().hex[:8]}"
    work = {"gid": gid, "branch": "payment", "order_id": str(uuid.uuid4()), "customer_id": RICH[7],
            "amount_cents": PLAN.balance_cents * 10}
    first = (await participant(settings, "payment", "3pc/can-commit", work)).json()
    again = (await participant(settings, "payment", "3pc/can-commit", work)).json()
    assert first["outcome"] == "VOTED_NO" and first["why"] and "VOTED_NO" not in first["why"]
    assert again == {**first, "repeated": True}
    with psycopg.connect(settings.raw_dsn("payment")) as conn:
        conn.execute("DELETE FROM tcc_barrier WHERE gid = %s", (gid,))


async def test_3pc_participants_abort_a_vote_and_commit_a_pre_commit_that_hear_nothing_more(settings, admin,
                                                                                          client):
    gid, order = f"by-hand-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    work = {"gid": gid, "branch": "payment", "order_id": order, "customer_id": RICH[7], "amount_cents": 100}
    vote = await participant(settings, "payment", "3pc/can-commit", work)
    assert vote.json() == {"outcome": "VOTED_YES", "ready": True}

    def barrier(g: str) -> str | None:
        with psycopg.connect(settings.raw_dsn("payment")) as conn:
            row = conn.execute("SELECT outcome FROM tcc_barrier WHERE gid = %s AND op = '3pc'", (g,)).fetchone()
        return row[0] if row else None

    # the vote, then nothing for TXLAB_3PC_TIMEOUT_SECONDS: aborted, and a late pre-commit does nothing
    await eventually(lambda: barrier(gid) == "ABORTED_ON_TIMEOUT", within=30, interval=0.2, what="the vote aborted")
    late = await participant(settings, "payment", "3pc/pre-commit", work)
    assert late.json()["outcome"] == "SKIPPED" and prepared(settings)["payment"] == []
    # a pre-commit, then nothing: it commits on its own, as 3PC prescribes
    other = {**work, "gid": gid + "-2"}
    assert (await participant(settings, "payment", "3pc/can-commit", other)).json()["ready"] is True
    assert (await participant(settings, "payment", "3pc/pre-commit", other)).json()["outcome"] == "PREPARED"
    await eventually(lambda: barrier(gid + "-2") == "COMMITTED_ON_TIMEOUT", within=30, interval=0.2,
                     what="the pre-commit committed on its own")
    assert prepared(settings)["payment"] == []
    done = await participant(settings, "payment", "3pc/do-commit", {"gid": gid + "-2", "branch": "payment"})
    assert done.json() == {"outcome": "COMMITTED_ON_TIMEOUT", "repeated": True}
    with psycopg.connect(settings.raw_dsn("payment")) as conn:  # the hand-made payment is no order's: undo it
        conn.execute("UPDATE customers SET balance_cents = balance_cents + 100 WHERE id = %s", (RICH[7],))
        conn.execute("DELETE FROM payments WHERE order_id = %s", (order,))
        conn.execute("DELETE FROM tcc_barrier WHERE gid LIKE %s", (gid + "%",))


async def partition(client: Client, pattern: str) -> str:
    """Inventory's acknowledgement of phase 1 is lost, so the coordinator aborts; the abort to payment, which
    acknowledged, is lost too until payment's 3PC timeout has passed. Returns the order's id."""
    ack, send = {"2pc": ("inventory.xa.prepare", "coordinator.2pc.send_rollback"),
                 "3pc": ("inventory.3pc.pre_commit", "coordinator.3pc.send_abort")}[pattern]
    await client.admin("POST", "/faults", json={"point": ack, "action": "drop", "times": 1})
    await client.admin("POST", "/faults", json={"point": send, "action": "drop"})
    (gid,) = await place(client, [body(pattern, 30)])
    return gid


async def test_the_partition_that_makes_3pc_inconsistent_leaves_2pc_consistent(settings, system, client):
    # 2PC first: payment stays prepared (it blocks) until it learns the decision, then rolls back
    gid = await partition(client, "2pc")
    await eventually(lambda: prepared(settings)["payment"] == [f"txlab:{gid}:payment"], within=30, interval=0.1,
                     what="payment prepared")
    await asyncio.sleep(settings.threepc_timeout_seconds + 0.5)
    assert captured(settings, gid) == 0  # past the 3PC timeout: a 2PC participant never commits on its own
    # the rollback is still lost: the in-doubt sweep asks the coordinator, which decided abort
    await eventually(lambda: prepared(settings)["payment"] == [], within=30, interval=0.2, what="the sweep")
    assert captured(settings, gid) == 0
    await clear_faults(client)
    assert (await settled(settings, [gid]))[gid] == "CANCELLED"
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, [(i.name, i.violations) for i in report.invariants if not i.holds]
    assert prepared(settings) == {"inventory": [], "payment": []}

    # 3PC: payment, pre-committed, hears nothing and commits on its own; the coordinator decided abort
    gid = await partition(client, "3pc")
    with psycopg.connect(settings.raw_dsn("payment")) as conn:
        def committed_alone() -> bool:
            row = conn.execute("SELECT outcome FROM tcc_barrier WHERE gid = %s AND op = '3pc'", (gid,)).fetchone()
            conn.commit()
            return row is not None and row[0] == "COMMITTED_ON_TIMEOUT"

        await eventually(committed_alone, within=30, interval=0.1, what="payment committed on its own")
    await clear_faults(client)
    assert (await settled(settings, [gid]))[gid] == "CANCELLED"
    async with admin_client(settings) as admin:
        record = await eventually(lambda: _final(admin, gid), within=30, interval=0.2, what="the transaction over")
    assert record["decision"] == "abort" and record["branches"]["payment"]["result"] == "COMMITTED_ON_TIMEOUT"
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    broken = {i.name: i.violations for i in report.invariants if not i.holds}
    assert report.exit_code == 1
    split = [v for v in broken[next(n for n in broken if n.startswith("coordinated"))] if v.startswith("split")]
    assert split == [f"split outcome: branch payment of {gid} committed (on its own after the 3PC timeout) while "
                     f"its transaction decided abort (ABORTED)"]
    assert any(f"CANCELLED order {gid} still holds a captured payment" in v for v in
               broken[next(n for n in broken if n.startswith("agreement"))])


def captured(settings, gid: str) -> int:
    with psycopg.connect(settings.raw_dsn("payment")) as conn:
        return conn.execute("SELECT count(*) FROM payments WHERE order_id = %s AND status = 'CAPTURED'",
                            (gid,)).fetchone()[0]


async def _final(admin: httpx.AsyncClient, gid: str) -> dict | None:
    record = await transaction(admin, gid)
    return record if record["state"] in ("COMMITTED", "ABORTED") else None
