"""The parking queues: messages a consumer gave up on, replayed or purged by hand; and the queue depths the
checker reads."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel

from services.messaging.topology import Topology


async def replay_parked(url: str, topology: Topology, service: str, purge: bool = False) -> int:
    """Move the service's parked messages back onto its queue (the inbox absorbs any that were in fact
    applied), or with `purge` drop them; return how many.

    Only the messages parked when the replay starts are moved: one that fails again is parked again and
    waits for the next replay, instead of going round for ever."""
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        parking = await channel.declare_queue(topology.parking(service), durable=True)
        if purge:
            return (await parking.purge()).message_count or 0
        waiting = parking.declaration_result.message_count or 0
        moved = 0
        while moved < waiting and (message := await parking.get(no_ack=False, fail=False)) is not None:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, message_id=message.message_id, type=message.type,
                                 content_type=message.content_type,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=topology.queue(service))
            await message.ack()
            moved += 1
        return moved


async def _depth(connection: aio_pika.abc.AbstractConnection, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue; a queue never declared is empty."""
    channel: AbstractChannel = await connection.channel()  # a failed passive declare closes its channel
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return 0, 0
    result = queue.declaration_result
    await channel.close()
    return result.message_count or 0, result.consumer_count or 0


async def queue_depths(url: str, topology: Topology, purge: bool = False) -> dict[str, int]:
    """Messages ready in every service's queue (`<service>_queued`) and parking queue (`<service>_parked`),
    and the consumers on each service's queue (`<service>_consumers`); with `purge`, also drop the messages."""
    depths: dict[str, int] = {}
    async with await aio_pika.connect(url, timeout=10) as connection:
        for service in topology.services:
            for kind, name in (("queued", topology.queue(service)), ("parked", topology.parking(service))):
                ready, consumers = await _depth(connection, name)
                depths[f"{service}_{kind}"] = ready
                if kind == "queued":
                    depths[f"{service}_consumers"] = consumers
                if purge and ready:
                    channel = await connection.channel()
                    await (await channel.get_queue(name, ensure=False)).purge()
                    await channel.close()
    return depths


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete the topology's queues (parking queues included) and exchanges: a test's or a scenario's own."""
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        for service in topology.services:
            await channel.queue_delete(topology.queue(service))
            await channel.queue_delete(topology.parking(service))
        await channel.exchange_delete(topology.exchange)
        await channel.exchange_delete(topology.dlx)
