"""A message that is not an envelope, or that keeps failing, goes to the service's parking queue (DLX)
instead of blocking the queue, and the checker counts it as not converged."""

import asyncio

import aio_pika
import pytest

from services.checker import queued_messages
from services.common.bus import Bus, PublishFailed
from services.common.envelope import Envelope
from services.common.faults import FaultInjector


async def wait_for(predicate, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_poison_and_repeatedly_failing_messages_are_parked(settings, tmp_path):
    settings = settings.model_copy(update={"consumer_max_failures": 3})
    bus = Bus(settings, "payment", FaultInjector("payment", tmp_path))
    await bus.connect()
    handled: list[str] = []

    async def handler(envelope: Envelope) -> None:
        handled.append(envelope.type)
        if envelope.payload.get("explode"):
            raise RuntimeError("handler bug")

    try:
        await bus.consume(["test.#"], handler)
        conn = await aio_pika.connect(settings.amqp)
        async with conn:
            channel = await conn.channel()
            exchange = await channel.get_exchange(bus.names.exchange)
            await exchange.publish(aio_pika.Message(b"definitely not json"), routing_key="test.garbage")
            await exchange.publish(aio_pika.Message(Envelope(type="test.bad", payload={"explode": True}).to_bytes()),
                                   routing_key="test.bad")
            await exchange.publish(aio_pika.Message(Envelope(type="test.good").to_bytes()), routing_key="test.good")

            async def parked_two() -> bool:
                return (await asyncio.to_thread(queued_messages, settings))["payment_parked"] == 2

            await wait_for(parked_two)
        assert handled.count("test.bad") == 3, "a failing message is retried, then parked"
        assert handled.count("test.good") == 1, "the good message behind them was still delivered"
    finally:
        await bus.close()
        conn = await aio_pika.connect(settings.amqp)
        async with conn:
            channel = await conn.channel()
            await (await channel.get_queue(bus.names.parking("payment"))).purge()
            await channel.queue_delete(bus.names.queue("payment"))


async def test_transient_errors_are_retried_as_long_as_it_takes_and_never_parked(settings, tmp_path):
    settings = settings.model_copy(update={"consumer_max_failures": 2})
    bus = Bus(settings, "order", FaultInjector("order", tmp_path))
    await bus.connect()
    calls: list[int] = []

    async def flaky(envelope: Envelope) -> None:
        calls.append(1)
        if len(calls) <= 4:
            raise ConnectionError("the database is restarting")

    try:
        await bus.consume(["transient.#"], flaky, is_transient=lambda exc: isinstance(exc, ConnectionError))
        await publish(settings, bus, Envelope(type="transient.x"), "transient.x")

        async def handled() -> bool:
            return len(calls) == 5

        await wait_for(handled)
        assert (await asyncio.to_thread(queued_messages, settings))["order_parked"] == 0
    finally:
        await bus.close()
        await delete_queues(settings, bus)


async def test_a_parked_message_replayed_after_the_fix_is_applied(settings, tmp_path):
    settings = settings.model_copy(update={"consumer_max_failures": 2})
    bus = Bus(settings, "inventory", FaultInjector("inventory", tmp_path))
    await bus.connect()
    fixed = False
    applied: list[str] = []

    async def handler(envelope: Envelope) -> None:
        if not fixed:
            raise KeyError("a bug in the handler")
        applied.append(envelope.type)

    try:
        await bus.consume(["replay.#"], handler)
        await publish(settings, bus, Envelope(type="replay.me"), "replay.me")

        async def parked() -> bool:
            return (await asyncio.to_thread(queued_messages, settings))["inventory_parked"] == 1

        await wait_for(parked)
        fixed = True
        assert await bus.replay_parked() == 1

        async def done() -> bool:
            return applied == ["replay.me"]

        await wait_for(done)
        assert (await asyncio.to_thread(queued_messages, settings))["inventory_parked"] == 0
    finally:
        await bus.close()
        await delete_queues(settings, bus)


async def test_a_message_no_queue_takes_is_a_failed_publish_not_a_silent_success(settings, tmp_path):
    bus = Bus(settings, "payment", FaultInjector("payment", tmp_path))
    await bus.connect()
    try:
        with pytest.raises(PublishFailed):
            await bus.publish(Envelope(type="nobody.listens"), "nobody.listens")
    finally:
        await bus.close()


async def publish(settings, bus: Bus, envelope: Envelope, routing_key: str) -> None:
    conn = await aio_pika.connect(settings.amqp)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.get_exchange(bus.names.exchange)
        await exchange.publish(aio_pika.Message(envelope.to_bytes()), routing_key=routing_key)


async def delete_queues(settings, bus: Bus) -> None:
    conn = await aio_pika.connect(settings.amqp)
    async with conn:
        channel = await conn.channel()
        await channel.queue_delete(bus.names.queue(bus.service))
        await channel.queue_delete(bus.names.parking(bus.service))
