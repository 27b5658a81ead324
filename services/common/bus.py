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
from services.common.settings import Settings

log = logging.getLogger("txlab.bus")

Handler = Callable[[Envelope], Awaitable[None]]


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
        channel = await self._connection.channel(publisher_confirms=True)
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
                await self._exchange.publish(message, routing_key=routing_key, timeout=timeout)
        except (aio_pika.exceptions.DeliveryError, TimeoutError) as exc:
            raise PublishFailed(f"{routing_key} {message_id}: {exc!r}") from exc

    async def consume(self, routing_keys: Iterable[str], handler: Handler) -> None:
        """Deliver every message bound to this service's queue to `handler`, ack after it returns.

        A handler error requeues the message (after a short pause); one that fails
        `consumer_max_failures` times, or that is not an envelope at all, goes to the parking queue.
        """
        assert self._connection is not None, "connect() first"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.settings.consumer_prefetch)
        dlx = await channel.get_exchange(self.names.dlx)
        parking = await channel.declare_queue(self.names.parking(self.service), durable=True)
        await parking.bind(dlx, routing_key=self.service)
        queue = await channel.declare_queue(self.names.queue(self.service), durable=True, arguments={
            "x-dead-letter-exchange": self.names.dlx, "x-dead-letter-routing-key": self.service})
        exchange = await channel.get_exchange(self.names.exchange)
        for key in routing_keys:
            await queue.bind(exchange, routing_key=key)
        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._deliver(message, handler)

        await queue.consume(deliver)

    async def _deliver(self, message: AbstractIncomingMessage, handler: Handler) -> None:
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
            if failures >= self.settings.consumer_max_failures:
                self._failures.pop(key, None)
                log.error("message %s (%s) failed %d times, parked: %r", key, envelope.type, failures, exc)
                await message.reject(requeue=False)
            else:
                self._failures[key] = failures
                log.warning("message %s (%s) failed (%d), requeued: %r", key, envelope.type, failures, exc)
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                await message.nack(requeue=True)
            return
        self._failures.pop(key, None)
        await message.ack()
