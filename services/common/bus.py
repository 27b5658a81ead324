"""The RabbitMQ event bus: topology, confirmed publishing and a consumer with manual acks.

One topic exchange `txlab.events`, one durable queue per consuming service bound to the routing keys it
handles, and a dead-letter exchange `txlab.dlx` routing poison messages to a parking queue per service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from services.common.envelope import Envelope, InvalidEnvelope
from services.common.faults import FaultInjector
from services.common.settings import SERVICES, Settings

log = logging.getLogger("txlab.bus")

Handler = Callable[[Envelope], Awaitable[None]]
IsTransient = Callable[[BaseException], bool]


class PublishFailed(RuntimeError):
    """The broker did not confirm a message."""


class BusNames:
    def __init__(self, prefix: str) -> None:
        self.exchange = f"{prefix}txlab.events"
        self.dlx = f"{prefix}txlab.dlx"
        self._prefix = prefix

    def queue(self, service: str) -> str:
        return f"{self._prefix}{service}.events"

    def parking(self, service: str) -> str:
        return f"{self._prefix}{service}.parking"


class Bus:
    """One connection, a confirming publisher channel and (optionally) one consumer channel."""

    def __init__(self, settings: Settings, service: str, faults: FaultInjector) -> None:
        self.settings = settings
        self.service = service
        self.faults = faults
        self.names = BusNames(settings.bus_prefix)
        self._connection: AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._failures: dict[str, int] = {}

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.settings.amqp, client_properties={
            "connection_name": f"txlab-{self.service}"})
        # mandatory + on_return_raises: a message no queue takes is a failed publish, never a silent SENT
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await channel.declare_exchange(self.names.exchange, aio_pika.ExchangeType.TOPIC,
                                                        durable=True)
        await channel.declare_exchange(self.names.dlx, aio_pika.ExchangeType.DIRECT, durable=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def publish(self, envelope: Envelope, routing_key: str, timeout: float = 10.0) -> None:
        """Return only once the broker confirmed the message (publisher confirms); raise otherwise."""
        await self.publish_raw(envelope.to_bytes(), str(envelope.message_id), envelope.type, routing_key, timeout)

    async def publish_raw(self, body: bytes, message_id: str, type: str, routing_key: str,
                          timeout: float = 10.0) -> None:
        """Publish an already serialized envelope (as the outbox stores it), with confirms."""
        assert self._exchange is not None, "connect() first"
        action = await self.faults.hit("bus.publish")
        message = aio_pika.Message(body, message_id=message_id, content_type="application/json", type=type,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        copies = 2 if action == "duplicate" else 1
        try:
            for _ in range(copies):
                await self._exchange.publish(message, routing_key=routing_key, timeout=timeout, mandatory=True)
        except (aio_pika.exceptions.DeliveryError, TimeoutError) as exc:
            raise PublishFailed(f"{routing_key} {message_id}: {exc!r}") from exc

    async def consume(self, routing_keys: Iterable[str], handler: Handler,
                      is_transient: IsTransient = lambda _: False) -> None:
        """Deliver every message bound to this service's queue to `handler`, ack after it returns.

        A transient error (the database restarting, an injected fault) requeues the message after a
        capped backoff, as often as it takes. Any other handler error requeues it too, but a message failing
        `consumer_max_failures` times, or one that is not an envelope at all, goes to the parking queue
        (`replay_parked` puts it back)."""
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.settings.consumer_prefetch)
        queue = await self._declare_queues(channel)
        exchange = await channel.get_exchange(self.names.exchange)
        for key in routing_keys:
            await queue.bind(exchange, routing_key=key)

        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._deliver(message, handler, is_transient)

        await queue.consume(deliver)

    async def _declare_queues(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
        dlx = await channel.get_exchange(self.names.dlx)
        parking = await channel.declare_queue(self.names.parking(self.service), durable=True)
        await parking.bind(dlx, routing_key=self.service)
        return await channel.declare_queue(self.names.queue(self.service), durable=True, arguments={
            "x-dead-letter-exchange": self.names.dlx, "x-dead-letter-routing-key": self.service})

    async def _deliver(self, message: AbstractIncomingMessage, handler: Handler, is_transient: IsTransient) -> None:
        try:
            envelope = Envelope.from_bytes(message.body)
        except InvalidEnvelope as exc:
            log.error("poison message %s parked: %s", message.message_id, exc)
            await message.reject(requeue=False)
            return
        key = str(envelope.message_id)
        try:
            action = await self.faults.hit("bus.deliver")
            await handler(envelope)
            if action == "duplicate":
                await handler(envelope)
        except Exception as exc:
            failures = self._failures.get(key, 0) + 1
            if is_transient(exc):
                log.warning("message %s (%s) hit a transient error (%d), requeued: %r", key, envelope.type,
                            failures, exc)
            elif failures >= self.settings.consumer_max_failures:
                self._failures.pop(key, None)
                log.error("message %s (%s) failed %d times, parked: %r", key, envelope.type, failures, exc)
                await message.reject(requeue=False)
                return
            else:
                log.warning("message %s (%s) failed (%d), requeued: %r", key, envelope.type, failures, exc)
            self._failures[key] = failures
            await asyncio.sleep(min(0.05 * 2**failures, 2.0))
            await message.nack(requeue=True)
            return
        self._failures.pop(key, None)
        await message.ack()

    async def replay_parked(self, purge: bool = False) -> int:
        """Move this service's parked messages back onto its queue (the inbox absorbs any that were in
        fact applied), or with `purge` drop them; return how many."""
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            await self._declare_queues(channel)
            parking = await channel.get_queue(self.names.parking(self.service))
            if purge:
                return (await parking.purge()).message_count
            moved = 0
            while (message := await parking.get(no_ack=False, fail=False)) is not None:
                await channel.default_exchange.publish(
                    aio_pika.Message(message.body, message_id=message.message_id, type=message.type,
                                     content_type=message.content_type,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.names.queue(self.service))
                await message.ack()
                moved += 1
            return moved
        finally:
            await channel.close()


async def queue_depths(settings: Settings, purge: bool = False) -> dict[str, int]:
    """Messages waiting in every service's event queue (`<service>_queued`) and parking queue
    (`<service>_parked`); with `purge`, also drop them. Queues never declared count as empty."""
    names = BusNames(settings.bus_prefix)
    depths: dict[str, int] = {}
    async with await aio_pika.connect(settings.amqp, timeout=10) as connection:
        for service in SERVICES:
            for kind, queue_name in (("queued", names.queue(service)), ("parked", names.parking(service))):
                channel = await connection.channel()  # a failed passive declare closes its channel
                try:
                    queue = await channel.declare_queue(queue_name, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    depths[f"{service}_{kind}"] = 0
                    continue
                depths[f"{service}_{kind}"] = queue.declaration_result.message_count or 0
                if purge:
                    await queue.purge()
    return depths
