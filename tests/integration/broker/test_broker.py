"""The half-message broker as a real process on PostgreSQL and RabbitMQ: the API contract, check-back,
parking and its resolution, two processes at once, and bad input that changes nothing."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.broker.conftest import TOPIC, half
from tests.polling import eventually


async def state_of(broker: httpx.AsyncClient, message_id: str) -> str:
    return (await broker.get(f"/messages/{message_id}")).json()["state"]


async def test_a_half_message_reaches_consumers_only_once_committed(broker, producer, received):
    producer.answers = {}  # (no check-back decides this one: the producer commits it)
    sent = await broker.post("/messages", json=half(producer, 1, note="caf\u00e9"))
    assert sent.status_code == 201 and sent.json()["state"] == "HALF"
    mid = sent.json()["id"]
    await asyncio.sleep(0.2)  # within the immunity time: held, invisible
    assert received.bodies == [] and await state_of(broker, mid) == "HALF"

    committed = await broker.post(f"/messages/{mid}/commit")
    assert committed.status_code == 200 and committed.json()["changed"] is True
    await eventually(lambda: received.bodies, what="delivery")
    assert received.bodies == [{"n": "1", "note": "caf\u00e9"}]  # the body, unchanged
    assert await eventually(lambda: _delivered(broker, mid))
    history = (await broker.get(f"/messages/{mid}")).json()["history"]
    assert [(h["kind"], h.get("to") or h.get("ok")) for h in history if h["kind"] != "check"] == [
        ("transition", "HALF"), ("transition", "COMMITTED"), ("delivery", True), ("transition", "DELIVERED")]
    assert all(h["at"] for h in history)
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)


async def test_a_batch_of_committed_messages_is_delivered_each_once(broker, producer, received):
    producer.answers = {}
    ids = [(await broker.post("/messages", json=half(producer, f"batch-{i}"))).json()["id"] for i in range(20)]
    for mid in ids:
        assert (await broker.post(f"/messages/{mid}/commit")).status_code == 200
    for mid in ids:
        assert await eventually(lambda mid=mid: _delivered(broker, mid))
    batch = {f"batch-{i}" for i in range(20)}
    await eventually(lambda: batch <= received.ids().keys(), what="every message received")
    await asyncio.sleep(0.5)  # time for a second copy to arrive, were one sent
    assert {n: c for n, c in received.ids().items() if n in batch} == dict.fromkeys(batch, 1), "each once"
    for mid in ids:
        history = (await broker.get(f"/messages/{mid}")).json()["history"]
        steps = [(h["kind"], h.get("to")) for h in history if h["kind"] != "check"]  # a check-back may come between
        assert steps == [("transition", "HALF"), ("transition", "COMMITTED"), ("delivery", None),
                         ("transition", "DELIVERED")], history


async def _delivered(broker: httpx.AsyncClient, mid: str) -> bool:
    return await state_of(broker, mid) == "DELIVERED"


async def test_commit_and_rollback_are_idempotent_and_exclude_each_other(broker, producer, received):
    a = (await broker.post("/messages", json=half(producer, "a"))).json()["id"]
    b = (await broker.post("/messages", json=half(producer, "b"))).json()["id"]
    assert (await broker.post(f"/messages/{a}/commit")).status_code == 200
    again = await broker.post(f"/messages/{a}/commit")
    assert again.status_code == 200 and again.json()["changed"] is False
    refused = await broker.post(f"/messages/{a}/rollback")
    assert refused.status_code == 409 and ("COMMITTED" in refused.text or "DELIVERED" in refused.text)

    assert (await broker.post(f"/messages/{b}/rollback")).status_code == 200
    assert (await broker.post(f"/messages/{b}/rollback")).json() == {"id": b, "state": "ROLLED_BACK",
                                                                      "changed": False}
    refused = await broker.post(f"/messages/{b}/commit")
    assert refused.status_code == 409 and "ROLLED_BACK" in refused.text

    await eventually(lambda: _delivered(broker, a))
    await asyncio.sleep(0.5)
    assert received.ids() == {"a": 1}  # the rolled-back message never reaches a consumer


async def test_check_back_applies_the_producers_answer(broker, producer, received):
    ids = {}
    for n, answer in (("c", "COMMIT"), ("r", "ROLLBACK")):
        ids[n] = (await broker.post("/messages", json=half(producer, n))).json()["id"]
        producer.answers[ids[n]] = answer
    await eventually(lambda: _delivered(broker, ids["c"]), what="check-back commit")
    assert await eventually(lambda: _is(broker, ids["r"], "ROLLED_BACK"), what="check-back rollback")
    assert received.ids() == {"c": 1}
    history = (await broker.get(f"/messages/{ids['c']}")).json()["history"]
    checks = [h for h in history if h["kind"] == "check"]
    assert len(checks) == 1 and checks[0]["answer"] == "COMMIT" and checks[0]["applied"] is True
    assert producer.checks[ids["c"]] == 1


async def _is(broker: httpx.AsyncClient, mid: str, state: str) -> bool:
    return await state_of(broker, mid) == state


async def test_unknown_until_the_limit_parks_the_message_and_an_operator_resolves_it(broker, producer, received):
    parked = [(await broker.post("/messages", json=half(producer, n))).json()["id"] for n in ("p1", "p2")]
    for mid in parked:
        assert await eventually(lambda mid=mid: _is(broker, mid, "PARKED"), what="PARKED")
        message = (await broker.get(f"/messages/{mid}")).json()
        assert message["checks"] == 3 and producer.checks[mid] == 3  # the limit, then no more checks
    listed = (await broker.get("/messages", params={"state": "PARKED"})).json()
    assert {m["id"] for m in listed["items"]} >= set(parked)

    # a re-check while the producer still does not know leaves it parked
    still = await broker.post(f"/messages/{parked[0]}/recheck")
    assert still.status_code == 200 and still.json()["state"] == "PARKED"
    producer.answers[parked[0]] = "COMMIT"
    resolved = await broker.post(f"/messages/{parked[0]}/recheck")
    assert resolved.json()["state"] == "COMMITTED"
    await eventually(lambda: _delivered(broker, parked[0]))

    by_hand = await broker.post(f"/messages/{parked[1]}/rollback")
    assert by_hand.status_code == 200 and by_hand.json()["state"] == "ROLLED_BACK"
    await asyncio.sleep(0.5)
    assert received.ids() == {"p1": 1}
    assert (await broker.post(f"/messages/{parked[1]}/recheck")).status_code == 409


async def test_an_unreachable_producer_counts_as_unknown(broker, producer):
    body = half(producer, "x") | {"check_url": "http://127.0.0.1:9/check"}  # nothing listens on port 9
    mid = (await broker.post("/messages", json=body)).json()["id"]
    assert await eventually(lambda: _is(broker, mid, "PARKED"))
    message = (await broker.get(f"/messages/{mid}")).json()
    assert "no answer" in message["last_error"]
    assert [h["answer"] for h in message["history"] if h["kind"] == "check"] == ["UNKNOWN"] * 3


async def test_two_broker_processes_never_check_back_or_deliver_a_message_twice(broker, second_broker, producer,
                                                                               received):
    producer.default = "COMMIT"
    ids = [(await broker.post("/messages", json=half(producer, n))).json()["id"] for n in range(60)]
    assert await eventually(lambda: len(received.bodies) >= 60, what="60 deliveries")
    await asyncio.sleep(1.0)  # room for a second check or delivery, were there any
    assert received.ids() == {str(n): 1 for n in range(60)}
    assert set(producer.checks.values()) == {1}
    checkers = set()
    for mid in ids:
        history = (await broker.get(f"/messages/{mid}")).json()["history"]
        checkers |= {h["by"] for h in history if h["kind"] == "check"}
    assert len(checkers) == 2  # both processes did part of the work


@pytest.mark.parametrize("body, why", [
    ({"topic": "Order Created", "body": {}, "producer": "order"}, "topic"),
    ({"topic": "order.created", "body": [1, 2], "producer": "order"}, "body"),
    ({"topic": "order.created", "body": {}, "producer": "../etc"}, "producer"),
    ({"topic": "order.created", "body": {}, "producer": "order", "check_url": "ftp://127.0.0.1/check"}, "http"),
    ({"topic": "order.created", "body": {}, "producer": "order", "check_url": "http://169.254.169.254/latest"},
     "installation"),
    ({"topic": "order.created", "body": {}, "producer": "order", "check_url": "http://u:p@127.0.0.1/c"},
     "credentials"),
    ({"topic": "order.created", "body": {}, "producer": "order", "extra": 1}, "extra"),
])
async def test_bad_input_is_refused_with_a_reason_and_changes_nothing(broker, producer, body, why):
    before = (await broker.get("/stats")).json()
    sent = await broker.post("/messages", json={"check_url": producer.check_url, **body})
    assert sent.status_code == 422 and why in sent.text.lower(), sent.text
    assert (await broker.get("/stats")).json() == before


async def test_unknown_ids_oversized_bodies_and_missing_tokens(broker, producer, broker_settings):
    before = (await broker.get("/stats")).json()
    for path in ("/messages/00000000-0000-0000-0000-000000000000", "/messages/not-a-uuid"):
        assert (await broker.get(path)).status_code == 404
    assert (await broker.post("/messages/00000000-0000-0000-0000-000000000000/commit")).status_code == 404
    big = half(producer, "big", pad="x" * 70_000)
    assert (await broker.post("/messages", json=big)).status_code == 413
    async with httpx.AsyncClient(base_url=broker_settings.url("broker")) as anonymous:
        assert (await anonymous.post("/messages", json=half(producer, "anon"))).status_code == 401
        assert (await anonymous.get("/messages")).status_code == 401
        assert (await anonymous.get("/health")).status_code == 200
    assert (await broker.get("/stats")).json() == before
    assert (await broker.get("/messages", params={"state": "SOMETHING"})).status_code == 422
    assert TOPIC == "order.created"


async def test_a_page_past_the_last_message_is_empty_and_an_offset_beyond_a_bigint_is_refused(broker):
    past = await broker.get("/messages", params={"offset": 2**63 - 1})
    assert past.status_code == 200 and past.json()["items"] == [], past.text
    beyond = await broker.get("/messages", params={"offset": 2**63})
    assert beyond.status_code == 422 and "offset" in beyond.text, beyond.text
