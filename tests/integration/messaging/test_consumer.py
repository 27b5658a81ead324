"""The consumer and the topology against real RabbitMQ and PostgreSQL: every queue exists before its consumer,
the world's errors are waited out, the message's own errors park it, and a replay of the parking queue ends."""

import asyncio
import json
import uuid

import aio_pika
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import make_engine, migrate
from services.common.envelope import Envelope
from services.messaging.consumer import Consumer
from services.messaging.inbox import unit_of_work
from services.messaging.parking import queue_depths, replay_parked
from services.messaging.publisher import Publisher, PublishRefused
from tests.polling import eventually


def each(handler):
    """A batch handler applying one envelope at a time (these tests run batches of one)."""
    async def apply(batch):
        for envelope in batch:
            await handler(envelope)
    return apply


async def depth(settings, topology, key: str) -> int:
    return (await queue_depths(settings.amqp, topology))[key]


async def publish_raw(settings, topology, body: bytes, routing_key: str, headers: dict | None = None) -> None:
    async with await aio_pika.connect(settings.amqp) as conn:
        exchange = await (await conn.channel()).get_exchange(topology.exchange)
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key=routing_key)


@pytest.mark.parametrize("traceparent", [7, 1.5, True, "not a traceparent", "\u00ff\u00fe", "00-zz-yy-01", ["00-a"]])
async def test_a_message_whose_trace_context_is_garbage_is_applied_all_the_same(
        settings, topology, connect, faults, traceparent):
    t = topology({"order": ("traced.#",)})
    applied: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        applied.append(envelope)

    await Consumer(await connect(t), "order", each(handler), faults).start()
    body = Envelope(type="traced.x").to_dict() | {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-00"}
    await publish_raw(settings, t, json.dumps(body).encode(), "traced.x", {"traceparent": traceparent})
    await eventually(lambda: len(applied) == 1, within=30, what="the message applied")
    assert await depth(settings, t, "order_parked") == 0


async def test_an_event_published_before_its_consumer_started_still_reaches_it(
        settings, topology, connect, faults):
    shop = topology({"inventory": ("order.created",), "payment": ("order.created",)})
    publisher = Publisher(await connect(shop, "order"), faults)  # only the order side runs yet
    await publisher.start()
    event = Envelope(type="order.created", order_id=uuid.uuid4())
    await publisher.publish(event)
    got: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        got.append(envelope)

    await Consumer(await connect(shop, "payment"), "payment", each(handler), faults, batch=1).start()
    await eventually(lambda: got, within=10, what="the early event at payment")
    assert [e.message_id for e in got] == [event.message_id]


async def test_a_message_no_queue_takes_is_refused_not_a_silent_success(topology, connect, faults):
    publisher = Publisher(await connect(topology({"payment": ("order.created",)})), faults)
    await publisher.start()
    with pytest.raises(PublishRefused, match="no queue is bound"):
        await publisher.publish(Envelope(type="nobody.listens"))


async def test_poison_and_repeatedly_failing_messages_are_parked(settings, topology, connect, faults):
    t = topology({"payment": ("test.#",)})
    handled: list[str] = []

    async def handler(envelope: Envelope) -> None:
        handled.append(envelope.type)
        if envelope.payload.get("explode"):
            raise RuntimeError("handler bug")

    await Consumer(await connect(t), "payment", each(handler), faults, batch=1, max_failures=3).start()
    await publish_raw(settings, t, b"definitely not json", "test.garbage")
    await publish_raw(settings, t, Envelope(type="test.bad", payload={"explode": True}).to_bytes(), "test.bad")
    await publish_raw(settings, t, Envelope(type="test.good").to_bytes(), "test.good")

    async def parked_two() -> bool:
        return await depth(settings, t, "payment_parked") == 2

    await eventually(parked_two, within=20, what="two parked messages")
    assert handled.count("test.bad") == 3, "a failing message is retried, then parked"
    assert handled.count("test.good") == 1, "the good message behind them was still delivered"


async def test_the_worlds_errors_never_count_toward_parking(settings, topology, connect, faults):
    t = topology({"order": ("transient.#",)})
    calls: list[str] = []

    async def flaky(envelope: Envelope) -> None:
        calls.append("call")
        if len(calls) <= 6:
            raise ConnectionError("the database is restarting")
        if len(calls) == 7:
            raise RuntimeError("one failure of its own")

    await Consumer(await connect(t), "order", each(flaky), faults, batch=1, max_failures=2).start()
    await publish_raw(settings, t, Envelope(type="transient.x").to_bytes(), "transient.x")
    await eventually(lambda: len(calls) == 8, within=30, what="the message applied")
    assert await depth(settings, t, "order_parked") == 0


@pytest.fixture(scope="module")
async def engine(settings):
    await asyncio.to_thread(migrate, settings, "payment")
    engine = make_engine(settings.model_copy(update={"db_pool_size": 1}), "payment")
    yield engine
    await engine.dispose()


async def test_a_slow_database_delays_a_message_and_never_parks_it(settings, topology, connect, faults, engine):
    """No pooled connection comes free in time (SQLAlchemy's pool TimeoutError): the database is slow, the
    message is fine."""
    t = topology({"payment": ("slow.#",)})
    applied: list[str] = []
    one = create_async_engine(settings.dsn("payment"), pool_size=1, max_overflow=0, pool_timeout=0.2)
    busy = await one.connect()  # holds the pool's only connection

    async def handler(envelope: Envelope) -> None:
        async with one.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        applied.append(envelope.type)

    await Consumer(await connect(t), "payment", each(handler), faults, batch=1, max_failures=2).start()
    await publish_raw(settings, t, Envelope(type="slow.x").to_bytes(), "slow.x")
    await asyncio.sleep(3)  # far more than max_failures pool timeouts
    assert await depth(settings, t, "payment_parked") == 0 and applied == []
    await busy.close()
    await eventually(lambda: applied == ["slow.x"], within=20, what="the message applied")
    await one.dispose()


async def test_input_the_driver_cannot_encode_parks_the_message(settings, topology, connect, faults, engine):
    """asyncpg refuses a parameter it cannot encode on the client (its DataError): retrying cannot help."""
    t = topology({"payment": ("bad.#",)})
    calls: list[int] = []

    async def handler(envelope: Envelope) -> None:
        calls.append(1)
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT count(*) FROM customers WHERE balance_cents = :n"),
                               {"n": envelope.payload["n"]})

    await Consumer(await connect(t), "payment", each(handler), faults, batch=1, max_failures=3).start()
    await publish_raw(settings, t, Envelope(type="bad.n", payload={"n": "three"}).to_bytes(), "bad.n")

    async def parked() -> bool:
        return await depth(settings, t, "payment_parked") == 1

    await eventually(parked, within=20, what="the malformed message parked")
    assert len(calls) == 3


async def test_a_replay_moves_only_what_was_parked_when_it_began(settings, topology, connect, faults):
    t = topology({"inventory": ("replay.#",)})
    fixed = False
    applied: list[str] = []

    async def handler(envelope: Envelope) -> None:
        if not fixed:
            raise KeyError("a bug in the handler")
        applied.append(envelope.type)

    await Consumer(await connect(t), "inventory", each(handler), faults, batch=1, max_failures=1).start()
    for i in range(3):
        await publish_raw(settings, t, Envelope(type=f"replay.{i}").to_bytes(), f"replay.{i}")

    async def parked(n: int):
        async def probe() -> bool:
            return await depth(settings, t, "inventory_parked") == n
        return probe

    await eventually(await parked(3), within=20, what="three parked")
    # still broken: each replayed message is parked again at once, and the replay must still end
    assert await asyncio.wait_for(replay_parked(settings.amqp, t, "inventory"), 30) == 3
    await eventually(await parked(3), within=20, what="parked again")
    fixed = True
    assert await replay_parked(settings.amqp, t, "inventory") == 3
    await eventually(lambda: len(applied) == 3, within=20, what="all three applied")
    assert sorted(applied) == ["replay.0", "replay.1", "replay.2"]
    assert await depth(settings, t, "inventory_parked") == 0


async def test_a_channel_the_broker_closes_is_replaced_by_a_fresh_connection(settings, topology, connect, faults):
    """Deleting the exchange under a running publisher makes RabbitMQ close its channel (404); the connection
    is opened again, the topology declared again, and publishing goes on."""
    t = topology({"payment": ("order.created",)})
    broker = await connect(t)
    publisher = Publisher(broker, faults)
    await publisher.start()
    await publisher.publish(Envelope(type="order.created"))
    async with await aio_pika.connect(settings.amqp) as conn:
        await (await conn.channel()).exchange_delete(t.exchange)
    with pytest.raises(ConnectionError):  # the 404 closes the publisher's channel
        await publisher.publish(Envelope(type="order.created"))

    async def published_again() -> bool:
        try:
            await publisher.publish(Envelope(type="order.created"))
        except ConnectionError:
            return False
        return True

    await eventually(published_again, within=20, what="publishing after the channel was replaced")
    assert broker.opened >= 2
    assert await depth(settings, t, "payment_queued") == 2


async def test_what_arrives_meanwhile_is_applied_as_one_batch_and_a_bad_message_does_not_sink_it(
        settings, topology, connect, faults):
    t = topology({"inventory": ("batch.#",)})
    gate = asyncio.Event()
    committed: list[str] = []
    sizes: list[int] = []

    async def handler(batch) -> None:  # all of the batch commits, or none of it
        sizes.append(len(batch))
        await gate.wait()
        if any(e.payload.get("explode") for e in batch):
            raise RuntimeError("handler bug")
        committed.extend(e.type for e in batch)

    consumer = Consumer(await connect(t), "inventory", handler, faults, max_failures=2)
    await consumer.start()
    await publish_raw(settings, t, Envelope(type="batch.first").to_bytes(), "batch.first")
    await eventually(lambda: sizes == [1], within=10, what="the first message held in its handler")
    for i in range(10):
        await publish_raw(settings, t, Envelope(type=f"batch.{i}", payload={"explode": i == 5}).to_bytes(),
                          f"batch.{i}")
    await eventually(lambda: consumer.in_flight == 11, within=10, what="ten more messages waiting")
    gate.set()

    async def parked() -> bool:
        return await depth(settings, t, "inventory_parked") == 1

    await eventually(parked, within=20, what="the bad message parked")
    assert sizes[:2] == [1, 10], "the ten that arrived meanwhile went to the handler together"
    assert sorted(committed) == sorted(["batch.first"] + [f"batch.{i}" for i in range(10) if i != 5])
    assert consumer.in_flight == 0


async def test_one_claim_tells_new_messages_from_duplicates_even_within_a_batch(engine):
    a, b = Envelope(type="claim.a"), Envelope(type="claim.b")
    async with unit_of_work(engine) as uow:
        assert await uow.claim_all([a, a]) == {a.message_id}
    async with unit_of_work(engine) as uow:
        assert await uow.claim_all([b, a]) == {b.message_id}
        assert not await uow.claim(b)


async def test_a_batch_applied_whole_is_acked_whole_and_nothing_comes_back(settings, topology, connect, faults):
    """One ack with `multiple` settles the batch: once the connection closes, no message of it returns."""
    t = topology({"payment": ("whole.#",)})
    gate = asyncio.Event()
    applied: list[str] = []
    sizes: list[int] = []

    async def handler(batch) -> None:
        sizes.append(len(batch))
        await gate.wait()
        applied.extend(e.type for e in batch)

    broker = await connect(t)
    consumer = Consumer(broker, "payment", handler, faults)
    await consumer.start()
    for i in range(12):
        await publish_raw(settings, t, Envelope(type=f"whole.{i}").to_bytes(), f"whole.{i}")
    await eventually(lambda: consumer.in_flight == 12, within=10, what="twelve messages delivered")
    gate.set()
    await eventually(lambda: len(applied) == 12 and consumer.in_flight == 0, within=10, what="all applied")
    assert sum(sizes) == 12 and max(sizes) > 1, sizes
    await consumer.stop()
    await broker.close()  # an unacked message would go back to the queue now
    await asyncio.sleep(0.5)
    assert await depth(settings, t, "payment_queued") == 0
    assert sorted(applied) == sorted(f"whole.{i}" for i in range(12))


async def test_a_batch_failing_for_the_worlds_reason_is_not_tried_message_by_message(
        settings, topology, connect, faults):
    """The database away: after the batch, one message alone tells whether it still is; the rest wait out
    the backoff instead of failing one by one."""
    t = topology({"order": ("away.#",)})
    gate = asyncio.Event()
    calls: list[int] = []
    applied: set[str] = set()

    async def handler(batch) -> None:
        calls.append(len(batch))
        await gate.wait()
        if len(calls) in (2, 3):
            raise ConnectionError("the database is restarting")
        applied.update(e.type for e in batch)

    consumer = Consumer(await connect(t), "order", handler, faults)
    await consumer.start()
    await publish_raw(settings, t, Envelope(type="away.first").to_bytes(), "away.first")
    await eventually(lambda: calls == [1], within=10, what="the first message held in its handler")
    for i in range(5):
        await publish_raw(settings, t, Envelope(type=f"away.{i}").to_bytes(), f"away.{i}")
    await eventually(lambda: consumer.in_flight == 6, within=10, what="five more messages waiting")
    gate.set()
    await eventually(lambda: len(applied) == 6 and consumer.in_flight == 0, within=20, what="all applied")
    assert calls[:3] == [1, 5, 1], calls
    assert await depth(settings, t, "order_parked") == 0
