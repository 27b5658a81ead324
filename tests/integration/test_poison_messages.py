"""A message that is not an envelope, or that keeps failing, goes to the service's parking queue (DLX)
instead of blocking the queue, and the checker counts it as not converged."""

import asyncio

import aio_pika

from services.checker import parked_messages
from services.common.bus import Bus
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
                return (await asyncio.to_thread(parked_messages, settings))["payment"] == 2

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
