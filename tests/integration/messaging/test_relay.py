"""The outbox relay against real PostgreSQL and RabbitMQ: publish once, confirm, lease, back off, fail, prune."""

import asyncio
import uuid

import aio_pika
import pytest
import sqlalchemy as sa

from services.common.db import make_engine, migrate
from services.common.envelope import Envelope
from services.common.faults import Arming
from services.messaging.connection import BrokerConnection
from services.messaging.inbox import unit_of_work
from services.messaging.outbox import OutboxStatus, resend_failed
from services.messaging.publisher import Publisher
from services.messaging.relay import OutboxRelay
from services.messaging.retention import prune
from tests.conftest import free_port


@pytest.fixture(scope="module")
async def engine(settings):
    await asyncio.to_thread(migrate, settings, "order")
    engine = make_engine(settings, "order")
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def empty_outbox(engine):
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE outbox, inbox"))


@pytest.fixture
async def wiring(topology, connect, faults):
    """A publisher on a topology whose one queue, `probe`, receives a copy of everything published."""
    probe_topology = topology({"probe": ("#",)})
    publisher = Publisher(await connect(probe_topology), faults)
    await publisher.start()
    return probe_topology, publisher


@pytest.fixture
def publisher(wiring):
    return wiring[1]


@pytest.fixture
async def probe(settings, wiring):
    """Drain the probe queue: the message ids published, in order."""
    conn = await aio_pika.connect(settings.amqp)
    channel = await conn.channel()
    queue = await channel.get_queue(wiring[0].queue("probe"))

    async def drain(expect: int, within: float = 10.0) -> list[str]:
        got: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                got.append(message.message_id)
            elif len(got) >= expect:
                await asyncio.sleep(0.2)  # give a stray duplicate the chance to show up
                if (extra := await queue.get(no_ack=True, fail=False)) is None:
                    break
                got.append(extra.message_id)
            else:
                await asyncio.sleep(0.02)
        return got

    yield drain
    await conn.close()


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


async def test_relay_publishes_every_row_once_and_marks_it_sent(settings, engine, publisher, faults, probe):
    ids = await add_events(engine, 50)
    await drain_relay(OutboxRelay(engine, publisher, settings, "order", faults))
    assert sorted(await probe(expect=50)) == sorted(ids)
    assert await statuses(engine) == {"SENT": 50}


async def test_two_relays_on_one_table_never_publish_the_same_row(settings, engine, publisher, faults, probe):
    ids = await add_events(engine, 300)
    small = settings.model_copy(update={"relay_batch": 20})
    relays = [OutboxRelay(engine, publisher, small, "order", faults) for _ in range(2)]
    await asyncio.gather(*(drain_relay(r) for r in relays))
    published = await probe(expect=300)
    assert len(published) == 300 and set(published) == ids
    assert all(r.published > 0 for r in relays), "both relays should have taken a share"


async def test_relay_holds_no_row_lock_while_it_waits_on_the_broker(settings, engine, publisher, faults, probe):
    await add_events(engine, 1)
    relay = OutboxRelay(engine, publisher, settings, "order", faults)
    faults.arm(Arming("relay.before_publish", "delay", delay_ms=3000))
    publishing = asyncio.create_task(relay.publish_batch())
    await asyncio.sleep(1.0)  # the relay claimed the row and is waiting
    async with engine.begin() as conn:
        await conn.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))
        row = (await conn.execute(sa.text("SELECT claimed_by FROM outbox FOR UPDATE"))).one()
    assert row.claimed_by == relay.relay_id, "the row is leased to the relay, not locked by it"
    assert await publishing == 1
    assert await statuses(engine) == {"SENT": 1}


async def test_a_restarted_relay_takes_back_its_own_leases_and_another_waits_for_expiry(
        settings, engine, publisher, faults, probe):
    (message_id,) = await add_events(engine, 1)
    dead = OutboxRelay(engine, publisher, settings, "order", faults, relay_id="order@host:1")
    faults.arm(Arming("relay.after_publish", "error", times=1))  # it dies after publishing, before settling
    with pytest.raises(RuntimeError, match="injected"):
        await dead.publish_batch()
    other = OutboxRelay(engine, publisher, settings, "order", faults, relay_id="order@host:2")
    assert await other.publish_batch() == 0, "a live lease keeps other relays off the row"
    restarted = OutboxRelay(engine, publisher, settings, "order", faults, relay_id="order@host:1")
    assert await restarted.release_own_leases() == 1
    assert await other.publish_batch() == 1
    assert await probe(expect=2) == [message_id, message_id], "published twice: the inbox absorbs the copy"
    assert await statuses(engine) == {"SENT": 1}


async def test_an_expired_lease_is_taken_over(settings, engine, publisher, faults, probe):
    await add_events(engine, 1)
    short = settings.model_copy(update={"relay_lease_seconds": 0.5})
    faults.arm(Arming("relay.after_publish", "error", times=1))
    with pytest.raises(RuntimeError):
        await OutboxRelay(engine, publisher, short, "order", faults).publish_batch()
    await asyncio.sleep(0.7)
    assert await OutboxRelay(engine, publisher, short, "order", faults).publish_batch() == 1
    assert await statuses(engine) == {"SENT": 1}


async def test_a_refused_row_backs_off_then_fails_and_resend_revives_it(settings, engine, publisher, faults, probe):
    (message_id,) = await add_events(engine, 1)
    relay = OutboxRelay(engine, publisher, settings.model_copy(update={"relay_max_attempts": 2}), "order", faults)
    faults.arm(Arming("relay.before_publish", "drop"))
    await relay.publish_batch()
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(
            "SELECT status, attempts, next_attempt_at > now() AS later, last_error, claimed_by FROM outbox"))).one()
    assert (row.status, row.attempts, row.later, row.claimed_by) == ("PENDING", 1, True, None)
    assert "refused" in row.last_error
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


async def test_an_unroutable_message_is_refused_not_silently_sent(settings, engine, topology, connect, faults):
    nobody = topology({"inventory": ("stock.nothing",)})
    publisher = Publisher(await connect(nobody), faults)
    await publisher.start()
    await add_events(engine, 1)
    await OutboxRelay(engine, publisher, settings, "order", faults).publish_batch()
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text("SELECT status, attempts, last_error FROM outbox"))).one()
    assert (row.status, row.attempts) == ("PENDING", 1) and "no queue is bound" in row.last_error


async def test_an_unreachable_broker_never_counts_against_a_row(settings, engine, topology, faults):
    nowhere = BrokerConnection(f"amqp://guest:guest@127.0.0.1:{free_port()}/", topology({"probe": ("#",)}), "x")
    publisher = Publisher(nowhere, faults)
    await publisher.start()
    await add_events(engine, 3)
    relay = OutboxRelay(engine, publisher, settings.model_copy(update={"relay_max_attempts": 1}), "order", faults)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            await relay.publish_batch()
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT status, attempts, claimed_by FROM outbox"))).all()
    assert [tuple(r) for r in rows] == [("PENDING", 0, None)] * 3


async def test_an_injected_publish_error_is_waited_out_not_counted(settings, engine, publisher, faults, probe):
    await add_events(engine, 1)
    relay = OutboxRelay(engine, publisher, settings.model_copy(update={"relay_max_attempts": 1}), "order", faults)
    faults.arm(Arming("relay.before_publish", "error", times=3))
    for _ in range(3):
        await relay.publish_batch()
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT status, attempts FROM outbox"))).one() == ("PENDING", 0)
    await drain_relay(relay)
    assert await statuses(engine) == {"SENT": 1}


async def test_crash_window_after_publish_republishes_and_the_inbox_absorbs_the_duplicate(
        settings, engine, publisher, faults, probe):
    (message_id,) = await add_events(engine, 1)
    relay = OutboxRelay(engine, publisher, settings, "order", faults)
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


async def test_relay_is_woken_by_notify_long_before_its_polling_interval(settings, engine, publisher, faults, probe):
    relay = OutboxRelay(engine, publisher, settings.model_copy(update={"relay_poll_seconds": 60}), "order", faults)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.5)  # let it LISTEN and go idle
        ids = await add_events(engine, 3)
        assert set(await probe(expect=3, within=10)) == ids
    finally:
        task.cancel()


async def test_the_database_refuses_an_outbox_state_that_does_not_exist(engine):
    await add_events(engine, 1)
    with pytest.raises(sa.exc.IntegrityError, match="outbox_status"):
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE outbox SET status = 'MAYBE'"))
    assert set(OutboxStatus) == {"PENDING", "SENT", "FAILED"}


async def test_sent_rows_and_inbox_rows_older_than_the_retention_are_pruned(engine):
    await add_events(engine, 4)
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "UPDATE outbox SET status = 'SENT', sent_at = now() - interval '3 hours' "
            "WHERE id IN (SELECT id FROM outbox LIMIT 2)"))
        await conn.execute(sa.text("UPDATE outbox SET status = 'SENT', sent_at = now() "
                                   "WHERE id = (SELECT id FROM outbox WHERE status = 'PENDING' LIMIT 1)"))
        await conn.execute(sa.text("INSERT INTO inbox (message_id, type, received_at) VALUES "
                                   "(gen_random_uuid(), 'old', now() - interval '3 hours'), "
                                   "(gen_random_uuid(), 'new', now())"))
    assert await prune(engine, retention_hours=2) == {"outbox": 2, "inbox": 1}
    assert await statuses(engine) == {"SENT": 1, "PENDING": 1}, "recent SENT rows and unsent rows stay"
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT type FROM inbox"))).scalars().all() == ["new"]
