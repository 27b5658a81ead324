"""The halfmsg pattern on the real processes: half message, local transaction, commit; and each crash the
pattern is famous for, resolved by the broker's check-back. Every run converges with `txlab check` holding,
and no message is ever delivered for an order that does not exist."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg
import pytest

from services.checker import run_checks
from services.common.faults import parse_spec
from services.demo import Client, order_bodies
from tests.polling import eventually

from .conftest import PLAN, own_system

ORDERS = 10


# A system of its own with short check-back timings: the first check 1 s after a half message, then every
# 0.5 s; an order's local transaction may commit up to 0.5 s after its half message.
settings, system = own_system("halfmsg", broker_immunity_seconds=1.0, broker_check_interval_seconds=0.5,
                              broker_max_checks=20, broker_poll_seconds=0.1, halfmsg_local_deadline_seconds=0.5)


@pytest.fixture
async def client(settings, system):
    c = Client(settings, retry_for=90.0)
    yield c
    await c.admin("DELETE", "/faults")
    await c.aclose()


async def broker_messages(settings, state: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=settings.url("broker"), timeout=10.0,
                                 headers={"Authorization": f"Bearer {settings.admin_token}"}) as broker:
        return (await broker.get("/messages", params={"state": state, "limit": 500})).json()["items"]


async def converged(settings) -> None:
    report = await asyncio.to_thread(run_checks, settings, 60.0)
    assert report.exit_code == 0, report.to_dict()


async def place(client, seed: int, count: int = ORDERS) -> list[dict]:
    placed = await asyncio.gather(*(client.place(b) for b in order_bodies(PLAN, count, "halfmsg", seed)))
    assert all(code in (200, 201) for code, _ in placed), placed
    return [body for _, body in placed]


async def test_halfmsg_orders_are_decided_like_outbox_orders(client, settings):
    before = len(await broker_messages(settings, "DELIVERED"))
    orders = await place(client, seed=1)
    await converged(settings)
    delivered = await broker_messages(settings, "DELIVERED")
    assert len(delivered) - before == ORDERS
    assert {str(o["id"]) for o in orders} <= {m["body"]["order_id"] for m in delivered}
    for o in orders:
        final = await client.http.get(f"{settings.url('order')}/orders/{o['id']}")
        assert final.json()["status"] in ("PAID", "CANCELLED")


async def test_a_crash_after_the_half_message_is_rolled_back_by_check_back(client, settings, system):
    await client.admin("POST", "/faults", json=parse_spec("order.after_half_sent=crash,times=1").request())
    orders = await place(client, seed=2, count=1)  # the client retries the same request after the crash
    await system.wait_healthy(60)
    rolled_back = await eventually(lambda: broker_messages(settings, "ROLLED_BACK"), within=30,
                                   what="the orphan half message rolled back")
    orphan = rolled_back[-1]
    assert orphan["body"]["order_id"] != str(orders[0]["id"])  # the retry placed a new order
    async with httpx.AsyncClient(base_url=settings.url("broker"), timeout=10.0,
                                 headers={"Authorization": f"Bearer {settings.admin_token}"}) as broker:
        history = (await broker.get(f"/messages/{orphan['id']}")).json()["history"]
    assert [h["answer"] for h in history if h["kind"] == "check"][-1] == "ROLLBACK"
    await converged(settings)  # no delivered message for the order that never was


async def test_a_crash_after_the_local_commit_is_committed_by_check_back(client, settings, system):
    await client.admin("POST", "/faults", json=parse_spec("order.before_half_decision=crash,times=1").request())
    orders = await place(client, seed=3, count=1)
    await system.wait_healthy(60)
    order_id = str(orders[0]["id"])

    async def delivered_by_check_back() -> bool:
        for m in await broker_messages(settings, "DELIVERED"):
            if m["body"]["order_id"] == order_id:
                return True
        return False

    assert await eventually(delivered_by_check_back, within=30, what="the committed order's message delivered")
    await converged(settings)


async def test_a_broker_crash_before_delivery_delivers_after_the_restart(client, settings, system):
    await client.admin("POST", "/faults", json=parse_spec("broker.before_deliver=crash,times=1").request())
    await place(client, seed=4)
    await system.wait_healthy(60)
    await converged(settings)
    assert system.children["broker"].restarts >= 1


async def test_an_unreachable_producer_delays_the_check_back_only(client, settings, system):
    await client.admin("POST", "/faults", json=parse_spec("broker.check_back=error,times=3").request())
    await client.admin("POST", "/faults", json=parse_spec("order.before_half_decision=crash,times=1").request())
    await place(client, seed=5, count=1)
    await system.wait_healthy(60)
    await converged(settings)


async def test_a_check_back_waits_for_a_local_transaction_still_running(client, settings):
    """The barrier, not a clock: a check-back past the deadline blocks on the running transaction's key and
    answers with its outcome: COMMIT if it commits, ROLLBACK if it aborts."""
    url = f"{settings.url('order')}/internal/halfmsg/check"
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    for commits in (True, False):
        order_id = uuid.uuid4()
        body = {"id": str(uuid.uuid4()), "topic": "order.created",
                "body": {"order_id": str(order_id), "occurred_at": "2000-01-01T00:00:00+00:00"}}
        with psycopg.connect(settings.raw_dsn("order")) as conn:  # a local transaction, holding its barrier key
            conn.execute("INSERT INTO halfmsg_barrier (order_id, outcome) VALUES (%s, 'COMMITTED')", (order_id,))
            async with httpx.AsyncClient(timeout=30.0) as http:
                answer = asyncio.create_task(http.post(url, json=body, headers=headers))
                await asyncio.sleep(1.0)
                assert not answer.done()  # it waits for the transaction, whatever the time
                await asyncio.to_thread(conn.commit if commits else conn.rollback)
                decision = (await answer).json()["decision"]
        assert decision == ("COMMIT" if commits else "ROLLBACK")


async def test_a_local_transaction_after_a_rollback_check_back_places_nothing(client, settings):
    """The other side of the barrier: once a check-back answered ROLLBACK, that order can never commit."""
    order_id = uuid.uuid4()
    body = {"id": str(uuid.uuid4()), "topic": "order.created",
            "body": {"order_id": str(order_id), "occurred_at": "2000-01-01T00:00:00+00:00"}}
    async with httpx.AsyncClient(timeout=30.0) as http:
        answer = await http.post(f"{settings.url('order')}/internal/halfmsg/check", json=body,
                                 headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert answer.json()["decision"] == "ROLLBACK"
    with psycopg.connect(settings.raw_dsn("order")) as conn:
        row = conn.execute("INSERT INTO halfmsg_barrier (order_id, outcome) VALUES (%s, 'COMMITTED') "
                           "ON CONFLICT (order_id) DO NOTHING RETURNING order_id", (order_id,)).fetchone()
    assert row is None


async def test_the_checker_reports_a_message_delivered_for_an_order_that_does_not_exist(client, settings):
    await converged(settings)
    ghost = str(uuid.uuid4())
    with psycopg.connect(settings.raw_dsn("broker"), autocommit=True) as conn:
        conn.execute("INSERT INTO half_messages (id, topic, body, producer, check_url, state, next_check_at) "
                     "VALUES (%s, 'order.created', %s, 'order', 'http://127.0.0.1/check', 'DELIVERED', now())",
                     (uuid.uuid4(), f'{{"order_id": "{ghost}"}}'))
        try:
            report = await asyncio.to_thread(run_checks, settings, 10.0)
            halfmsg = next(i for i in report.invariants if i.name.startswith("halfmsg"))
            assert not halfmsg.holds and any(ghost in v for v in halfmsg.violations)
        finally:
            conn.execute("DELETE FROM half_messages WHERE body->>'order_id' = %s", (ghost,))


async def test_a_message_parked_after_every_check_failed_is_resolved_through_the_admin_api(client, settings, system):
    """The producer unreachable for every check-back: the message is PARKED, `txlab check` says so, and an
    operator's re-check through the admin API settles it; then everything holds."""
    await client.admin("POST", "/faults", json=parse_spec("broker.check_back=error").request())
    await client.admin("POST", "/faults", json=parse_spec("order.before_half_decision=crash,times=1").request())
    orders = await place(client, seed=6, count=1)
    await system.wait_healthy(60)
    order_id = str(orders[0]["id"])

    async def parked() -> list[dict]:
        items = (await client.admin("GET", "/halfmsg/messages", params={"state": "PARKED"}))["items"]
        return [m for m in items if m["body"]["order_id"] == order_id]

    (message,) = await eventually(parked, within=60, what="the message parked")
    assert message["checks"] == settings.broker_max_checks
    report = await asyncio.to_thread(run_checks, settings, 5.0)
    assert report.exit_code == 1 and any("broker_parked" in v for i in report.invariants for v in i.violations)

    await client.admin("DELETE", "/faults")  # the producer is reachable again
    resolved = await client.admin("POST", f"/halfmsg/messages/{message['id']}/recheck")
    assert resolved["state"] == "COMMITTED"
    await converged(settings)
