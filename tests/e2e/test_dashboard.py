"""The dashboard at /ui on a running system: who may see it, what each view shows, the live stream, the actions,
and the coordinator replicas killed and restarted through the supervisor."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from services.coordinator.client import leading_replica
from services.supervisor import hold_file, pid_file
from tests.polling import eventually

from .conftest import PLAN, admin_client, first_event, own_system, place, settled

settings, system = own_system("dashboard", coordinator=True)

RICH = [cid for cid, _, balance in PLAN.customer_rows() if balance == PLAN.balance_cents]
SKUS = [sku for sku, _, _, stock in PLAN.catalogue() if stock == PLAN.stock]


def order(pattern: str, i: int) -> dict:
    return {"customer_id": RICH[i], "pattern": pattern, "items": [{"sku": SKUS[i], "qty": 1}]}


@pytest.fixture
async def anonymous(settings, system):
    async with admin_client(settings, token=False) as client:
        yield client


@pytest.fixture(scope="module")
async def orders(settings, system):
    """One settled order of each pattern this machine can run (outbox, halfmsg, tcc): {pattern: id}."""
    from services.demo import Client

    client = Client(settings, retry_for=90.0)
    try:
        ids = await place(client, [order(p, i) for i, p in enumerate(("outbox", "halfmsg", "tcc"))])
    finally:
        await client.aclose()
    final = await settled(settings, ids, within=90.0)
    assert set(final.values()) == {"PAID"}, final
    return dict(zip(("outbox", "halfmsg", "tcc"), ids, strict=True))


# ----------------------------------------------------------------------------- who may see it
async def test_without_the_token_or_the_cookie_a_page_sends_to_the_login_form_and_the_rest_is_401(anonymous):
    page = await anonymous.get("/ui/transactions", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/transactions"
    for method, path in (("GET", "/ui/events?view=overview"), ("POST", "/ui/tx/x/force-stop"),
                         ("POST", "/ui/coordinator/1/kill"), ("GET", "/ui/raft")):
        assert (await anonymous.request(method, path)).status_code == 401, path
    assert (await anonymous.get("/ui/login")).status_code == 200
    assert (await anonymous.get("/ui/static/htmx.min.js")).status_code == 200
    wrong = await anonymous.get("/ui", headers={"authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401


async def test_a_wrong_token_gets_the_form_again_with_a_clear_message(anonymous):
    answer = await anonymous.post("/ui/login", data={"token": "not-the-token", "next": "/ui/raft"})
    assert answer.status_code == 401
    assert "not the admin token" in answer.text and 'name="token"' in answer.text
    assert "set-cookie" not in answer.headers


async def test_the_login_form_sets_an_httponly_samesite_strict_cookie_that_opens_the_dashboard(settings, anonymous):
    answer = await anonymous.post("/ui/login", data={"token": settings.admin_token, "next": "/ui/raft"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/raft"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert settings.admin_token not in cookie  # the cookie proves the token, it does not carry it
    page = await anonymous.get("/ui/raft")  # the client keeps the cookie
    assert page.status_code == 200 and "Coordinator group" in page.text
    assert page.headers["x-frame-options"] == "DENY"  # never inside another page's frame
    # an action with the cookie from a page of another origin (another port of the same host is the same
    # site, so SameSite lets the cookie through) is refused; from the dashboard itself it is taken
    forged = await anonymous.post("/ui/faults/clear", data={"point": ""}, headers={"sec-fetch-site": "same-site"})
    assert forged.status_code == 403 and "another origin" in forged.text
    assert (await anonymous.post("/ui/faults/clear", data={"point": ""})).status_code == 403  # no sign at all
    own = await anonymous.post("/ui/faults/clear", data={"point": ""}, headers={"sec-fetch-site": "same-origin"})
    assert own.status_code == 200, own.text
    outside = await anonymous.post("/ui/login", data={"token": settings.admin_token, "next": "https://elsewhere/"})
    assert outside.headers["location"] == "/ui"  # a login never sends the browser off the dashboard
    await anonymous.post("/ui/logout")
    assert (await anonymous.get("/ui/raft")).status_code == 401


# ----------------------------------------------------------------------------- the views
async def test_the_overview_streams_orders_by_pattern_the_totals_and_the_backlogs(admin, orders):
    page = await admin.get("/ui")
    assert page.status_code == 200 and 'sse-connect="/ui/events?view=overview' in page.text
    assert '<script src="/ui/static/htmx.min.js">' in page.text  # served by admin, not a CDN

    async def sampled() -> str | None:
        html = await first_event(admin, "overview")
        return html if "total money" in html and "/ui/transactions?pattern=tcc" in html else None

    html = await eventually(sampled, within=30.0, what="a sample with the orders")
    for pattern in ("outbox", "halfmsg", "tcc"):
        assert f"/ui/transactions?pattern={pattern}" in html
    assert "(constant)" in html  # the seeded totals, kept
    assert "order outbox due" in html and "inventory queue" in html and "STUCK transactions" in html

    async def checked() -> str | None:
        badge = (await first_event(admin, "overview")).split('id="invariant-badge"', 1)[1]
        return badge if "checking" not in badge.split("</span>", 1)[0] else None

    assert "every invariant holds" in await eventually(checked, within=60.0, what="the invariants checked")


async def test_the_transactions_view_filters_by_pattern_state_id_and_stuck(admin, orders):
    everything = await admin.get("/ui/transactions")
    assert everything.status_code == 200
    assert all(oid in everything.text for oid in orders.values())
    tcc = await admin.get("/ui/transactions", params={"pattern": "tcc"})
    assert orders["tcc"] in tcc.text and orders["outbox"] not in tcc.text
    assert "CONFIRMED" in tcc.text  # the global transaction's state beside the order's
    by_id = await admin.get("/ui/transactions", params={"id": orders["halfmsg"][:8]})
    assert orders["halfmsg"] in by_id.text and orders["tcc"] not in by_id.text
    confirmed = await admin.get("/ui/transactions", params={"state": "CONFIRMED"})
    assert orders["tcc"] in confirmed.text and orders["outbox"] not in confirmed.text
    stuck = await admin.get("/ui/transactions", params={"stuck": "1", "stuck_seconds": "0"})
    assert all(oid not in stuck.text for oid in orders.values())  # all settled: none is stuck
    live = await first_event(admin, "transactions", pattern="outbox")
    assert orders["outbox"] in live and orders["tcc"] not in live
    for bad in ({"pattern": "saga"}, {"state": "NOPE"}, {"since": "soon"}, {"id": "zz'; drop"}):
        answer = await admin.get("/ui/transactions", params=bad)
        assert answer.status_code == 422, bad
    assert (await admin.get("/ui/events", params={"view": "transactions", "pattern": "saga"})).status_code == 422


async def test_the_detail_of_a_tcc_transaction_shows_its_branches_barrier_and_timeline(admin, orders):
    page = await admin.get(f"/ui/tx/{orders['tcc']}")
    assert page.status_code == 200
    for text in ('data-branch="inventory"', 'data-branch="payment"', "inventory/try", "inventory/confirm",
                 "payment/try", "payment/confirm", "decided commit", "reported to the order service",
                 'id="force-stop"', "hx-confirm="):
        assert text in page.text, text
    live = await first_event(admin, "transaction", id=orders["tcc"])
    assert 'id="global-state">CONFIRMED' in live and 'id="order-status">PAID' in live


async def test_the_detail_of_outbox_and_halfmsg_orders_shows_their_messages(admin, orders):
    outbox = (await admin.get(f"/ui/tx/{orders['outbox']}")).text
    for text in ("order.created", "stock.reserved", "payment.succeeded", "order.paid", "published (attempt"):
        assert text in outbox, text
    halfmsg = (await admin.get(f"/ui/tx/{orders['halfmsg']}")).text
    assert "broker half message" in halfmsg and "DELIVERED" in halfmsg
    assert "half-message barrier: local transaction COMMITTED" in halfmsg
    assert "resolve: commit" in halfmsg
    missing = await admin.get("/ui/tx/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no order or transaction" in missing.text
    smuggled = await admin.get("/ui/tx/x%3Fstate%3DSTUCK")  # an id is never read as a query of the coordinator
    assert smuggled.status_code == 404 and "x?state=STUCK" in smuggled.text


async def test_the_raft_view_shows_each_coordinator_replica_and_one_leader(settings, admin, system):
    status = await leading_replica(settings, admin, within=30.0)
    html = await first_event(admin, "raft")
    assert html.count('data-role="leader"') == 1 and html.count('data-role="follower"') == 2
    assert f'data-node="{status["id"]}" data-role="leader"' in html
    assert "coordinator-" in html and "leads term" in html


async def test_the_cache_view_draws_the_ring_and_a_node_added_and_removed(settings, admin):
    html = await first_event(admin, "cache")
    nodes = settings.cache_nodes.split(",")
    assert html.count("<path d=") >= len(nodes) and 'id="ring-nodes"' in html
    bad = await admin.post("/ui/cache/nodes", data={"name": "", "url": ""})
    assert bad.status_code == 422 and "name" in bad.text
    refused = await admin.post("/ui/cache/nodes", data={"name": "x", "url": "redis://127.0.0.1:1"})
    assert refused.status_code == 422 and "PING" in refused.text


async def test_the_faults_view_arms_and_clears_a_fault(admin):
    page = await admin.get("/ui/faults")
    assert "relay.after_publish" in page.text and "order.after_local_commit" in page.text
    armed = await admin.post("/ui/faults", data={"point": "relay.after_publish", "action": "delay", "delay_ms": "1",
                                                 "times": "1", "probability": ""})
    assert armed.status_code == 200 and "armed relay.after_publish" in armed.text
    assert 'data-point="relay.after_publish"' in await first_event(admin, "faults")
    bad = await admin.post("/ui/faults", data={"point": "relay.after_publish", "action": "delay", "times": "0"})
    assert bad.status_code == 422 and "times" in bad.text
    unknown = await admin.post("/ui/faults", data={"point": "nowhere", "action": "crash"})
    assert unknown.status_code == 422
    cleared = await admin.post("/ui/faults/clear", data={"point": "relay.after_publish"})
    assert cleared.status_code == 200 and "disarmed relay.after_publish" in cleared.text
    assert "nothing armed" in await first_event(admin, "faults")


# ----------------------------------------------------------------------------- the actions
async def test_force_stop_aborts_a_transaction_in_phase_one_and_refuses_a_decided_one(settings, admin):
    from services.demo import Client

    arm = await admin.post("/faults", json={"point": "inventory.tcc.try", "action": "delay", "delay_ms": 4000,
                                            "times": 1})
    assert arm.status_code == 201, arm.text
    client = Client(settings, retry_for=60.0)
    try:
        (oid,) = await place(client, [order("tcc", 5)])
    finally:
        await client.aclose()
    try:
        stopped = await admin.post(f"/ui/tx/{oid}/force-stop")
        assert stopped.status_code == 200, stopped.text
        assert "force-stopped" in stopped.text and "CANCELLING" in stopped.text
        assert (await settled(settings, [oid], within=90.0))[oid] == "CANCELLED"
        again = await admin.post(f"/ui/tx/{oid}/force-stop")  # repeated (a lost answer retried): the same
        assert again.status_code == 200 and "force-stopped" in again.text, again.text
        record = (await admin.get(f"/transactions/{oid}")).json()
        assert record["reason"] == "force-stopped by an operator"
        client = Client(settings, retry_for=60.0)
        try:
            (paid,) = await place(client, [order("tcc", 6)])
        finally:
            await client.aclose()
        assert (await settled(settings, [paid], within=90.0))[paid] == "PAID"
        refused = await admin.post(f"/ui/tx/{paid}/force-stop")
        assert refused.status_code == 409 and "only a transaction still in phase 1" in refused.text
    finally:
        await admin.delete("/faults")


async def test_killing_the_coordinator_leader_through_admin_elects_a_new_leader_with_a_higher_term(
        settings, admin, system):
    old = await leading_replica(settings, admin, within=30.0)
    name = f"coordinator-{old['id']}"
    pid = int(pid_file(system.settings, name).read_text())
    killed = await admin.post(f"/coordinator/kill/{old['id']}")
    assert killed.status_code == 200, killed.text
    assert killed.json() == {"killed": old["id"], "pid": pid, "held": True}
    new = await leading_replica(settings, admin, after_term=old["term"], within=60.0)
    assert new["id"] != old["id"] and new["term"] > old["term"]
    await asyncio.sleep(2.0)  # the supervisor would have restarted it by now: it is held down instead
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the replica's process is gone
    assert hold_file(system.settings, name).exists()
    with pytest.raises(httpx.ConnectError):
        await admin.get(f"{settings.url(name)}/health")
    html = await first_event(admin, "raft")
    assert f'data-node="{old["id"]}" data-role="down"' in html and "down (killed)" in html
    twice = await admin.post(f"/coordinator/kill/{old['id']}")
    assert twice.status_code == 409 and "already down" in twice.json()["detail"]
    restarted = await admin.post(f"/coordinator/restart/{old['id']}")
    assert restarted.status_code == 200 and restarted.json()["done"] == "released"

    async def back() -> bool:
        try:
            return (await admin.get(f"{settings.url(name)}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    assert await eventually(back, within=60.0, what=f"{name} back")
    assert (await admin.post("/coordinator/kill/9")).status_code == 404
