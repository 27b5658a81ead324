"""Publishing with publisher confirms, telling a refused message apart from an unreachable broker.

`publish` returns only once RabbitMQ confirmed the message. It raises `PublishRefused` when no queue is bound
to the routing key: that is the message's own failure. It raises `BrokerUnavailable` when there is no
connection, no answer in time, or a nack (RabbitMQ nacks only when a queue process failed or is full): that
is the world's, and a caller waits for `wait_connected` and tries again without counting an attempt.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from services.common.envelope import Envelope
from services.common.faults import FaultInjector
from services.common.tracing import publishing
from services.messaging.connection import BrokerConnection


class PublishRefused(RuntimeError):
    """RabbitMQ refused the message: no queue takes it."""


class BrokerUnavailable(ConnectionError):
    """RabbitMQ is unreachable, or did not confirm in time."""


class Publisher:
    def __init__(self, connection: BrokerConnection, faults: FaultInjector, confirm_timeout: float = 5.0) -> None:
        self.connection = connection
        self.faults = faults
        self.confirm_timeout = confirm_timeout
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        await self.connection.subscribe(self._open)

    async def _open(self, connection: AbstractConnection) -> None:
        # mandatory + on_return_raises: a message no queue takes is refused, never a silent success
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        channel.close_callbacks.add(self.connection.channel_lost)
        self._exchange = await channel.get_exchange(self.connection.topology.exchange, ensure=False)

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self.connection.wait_connected(timeout)

    async def publish(self, envelope: Envelope, routing_key: str | None = None) -> None:
        await self.publish_raw(envelope.to_bytes(), str(envelope.message_id), envelope.type,
                               routing_key or envelope.type, envelope.traceparent, envelope.order_id)

    async def publish_raw(self, body: bytes, message_id: str, type: str, routing_key: str,
                          traceparent: str | None = None, order_id: object = None) -> None:
        """Publish an already serialized envelope (as the outbox stores it) and wait for its confirm. The publish
        is a span under `traceparent` (the span that wrote the message), and its context travels in the AMQP
        headers."""
        exchange = self._exchange
        if exchange is None or not self.connection.connected:
            raise BrokerUnavailable("not connected to RabbitMQ")
        with publishing(routing_key, traceparent, order_id=order_id, message_id=message_id) as headers:
            await self._publish(exchange, body, message_id, type, routing_key, headers)

    async def _publish(self, exchange: AbstractExchange, body: bytes, message_id: str, type: str,
                       routing_key: str, headers: dict[str, str]) -> None:
        action = await self.faults.hit("bus.publish")
        message = aio_pika.Message(body, message_id=message_id, content_type="application/json", type=type,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT, headers=headers or None)
        try:
            for _ in range(2 if action == "duplicate" else 1):
                await exchange.publish(message, routing_key=routing_key, timeout=self.confirm_timeout,
                                       mandatory=True)
        except PublishError as exc:
            raise PublishRefused(f"no queue is bound to {routing_key!r} (message {message_id})") from exc
        except DeliveryError as exc:  # a nack: a queue process failed or is full, the broker's trouble
            raise BrokerUnavailable(f"RabbitMQ nacked message {message_id} ({routing_key})") from exc
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            raise BrokerUnavailable(f"{routing_key} {message_id}: {exc!r}") from exc
