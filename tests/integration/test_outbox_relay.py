"""The local message table against real PostgreSQL and RabbitMQ: publish once, confirm, back off, park."""

import asyncio
import uuid

import aio_pika
import pytest
import sqlalchemy as sa

from services.common.bus import Bus
from services.common.db import make_engine, migrate
from services.common.envelope import Envelope
from services.common.faults import Arming, FaultInjector
from services.common.outbox import OutboxRelay, resend_failed, unit_of_work


@pytest.fixture(scope="module")
async def engine(settings):
    await asyncio.to_thread(migrate, settings, "order")
    engine = make_engine(settings, "order")
    yield engine
    await engine.dispose()


@pytest.fixture
async def faults(tmp_path):
    return FaultInjector("order", tmp_path)


@pytest.fixture
async def bus(settings, faults):
    bus = Bus(settings, "order", faults)
    await bus.connect()
    yield bus
    await bus.close()


@pytest.fixture
async def probe(settings, bus):
    """A queue that receives a copy of everything published on the events exchange."""
    conn = await aio_pika.connect(settings.amqp)
    channel = await conn.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(bus.names.exchange, routing_key="#")

    async def drain(expect: int, within: float = 10.0) -> list[str]:
        got: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if len(got) >= expect:
                    await asyncio.sleep(0.2)  # give a stray duplicate the chance to show up
                    if (extra := await queue.get(no_ack=True, fail=False)) is None:
                        break
                    got.append(extra.message_id)
                    continue
                await asyncio.sleep(0.02)
                continue
            got.append(message.message_id)
        return got

    yield drain
    await conn.close()


@pytest.fixture(autouse=True)
async def empty_outbox(engine):
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE outbox, inbox"))


async def add_events(engine, n: int) -> set[str]:
    ids = set()
    async with unit_of_work(engine) as uow:
        for _ in range(n):
            env = Envelope(type="order.created", order_id=uuid.uuid4(), payload={})
            await uow.emit(env)
            ids.add(str(env.message_id))
    return ids


async def statuses(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(sa.text("SELECT status, count(*) FROM outbox GROUP BY status"))).all())


async def drain_relay(relay: OutboxRelay) -> None:
    while await relay.publish_batch():
        pass


async def test_relay_publishes_every_row_once_and_marks_it_sent(settings, engine, bus, faults, probe):
    ids = await add_events(engine, 50)
    await drain_relay(OutboxRelay(engine, bus, settings, "order", faults))
    published = await probe(expect=50)
    assert sorted(published) == sorted(ids)
    assert await statuses(engine) == {"SENT": 50}


async def test_two_relays_on_one_table_never_publish_the_same_row(settings, engine, bus, faults, probe):
    ids = await add_events(engine, 300)
    small = settings.model_copy(update={"relay_batch": 20})
    relays = [OutboxRelay(engine, bus, small, "order", faults) for _ in range(2)]
    await asyncio.gather(*(drain_relay(r) for r in relays))
    published = await probe(expect=300)
    assert len(published) == 300 and set(published) == ids
    assert all(r.published > 0 for r in relays), "both relays should have taken a share"


async def test_unconfirmed_publish_backs_off_then_parks_and_resend_revives_it(settings, engine, bus, faults, probe):
    (message_id,) = await add_events(engine, 1)
    relay = OutboxRelay(engine, bus, settings.model_copy(update={"relay_max_attempts": 2}), "order", faults)
    faults.arm(Arming("relay.before_publish", "drop"))
    await relay.publish_batch()
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT status, attempts, next_attempt_at > now() AS later, last_error FROM outbox"))).one()
    assert (row.status, row.attempts, row.later) == ("PENDING", 1, True)
    assert "drop" in row.last_error
    assert await relay.publish_batch() == 0, "a row is not retried before its next attempt time"
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE outbox SET next_attempt_at = now()"))
    await relay.publish_batch()
    assert await statuses(engine) == {"FAILED": 1}
    faults.disarm()
    assert await resend_failed(engine) == 1
    await drain_relay(relay)
    assert await statuses(engine) == {"SENT": 1}
    assert await probe(expect=1) == [message_id]


async def test_crash_window_after_publish_republishes_and_the_inbox_absorbs_the_duplicate(
        settings, engine, bus, faults, probe):
    (message_id,) = await add_events(engine, 1)
    relay = OutboxRelay(engine, bus, settings, "order", faults)
    faults.arm(Arming("relay.after_publish", "error", times=1))
    with pytest.raises(RuntimeError, match="injected"):
        await relay.publish_batch()
    assert await statuses(engine) == {"PENDING": 1}, "the row was published but not marked"
    await drain_relay(relay)
    published = await probe(expect=2)
    assert published == [message_id, message_id]
    envelope = Envelope(message_id=uuid.UUID(message_id), type="order.created")
    claims = []
    for _ in published:
        async with unit_of_work(engine) as uow:
            claims.append(await uow.claim(envelope))
    assert claims == [True, False]


async def test_relay_is_woken_by_notify_long_before_its_polling_interval(settings, engine, bus, faults, probe):
    relay = OutboxRelay(engine, bus, settings.model_copy(update={"relay_poll_seconds": 60}), "order", faults)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.5)  # let it LISTEN and go idle
        ids = await add_events(engine, 3)
        assert set(await probe(expect=3, within=10)) == ids
    finally:
        task.cancel()
