"""The consumer: delivers each message of a service's queue to its handler and acks after the handler's
transaction committed.

* A message that is not an envelope (poison) is parked at once, through the dead-letter exchange.
* An error that is the world's (`failures.is_transient`: the database restarting, a pool timeout, an injected
  error) puts the message back after a capped backoff, as often as it takes; it never counts against it.
* An error that is the message's own counts; after `max_failures` of them the message is parked.
* A lost connection needs nothing: unacked messages go back to the queue, the connection is reopened, and
  the inbox absorbs whatever had in fact been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from services.common.envelope import Envelope, InvalidEnvelope
from services.common.faults import FaultInjector
from services.messaging.connection import BrokerConnection, capped_backoff
from services.messaging.failures import is_transient

log = logging.getLogger("txlab.consumer")

Handler = Callable[[Envelope], Awaitable[None]]
IsTransient = Callable[[BaseException], bool]


class Consumer:
    def __init__(self, connection: BrokerConnection, service: str, handler: Handler, faults: FaultInjector, *,
                 prefetch: int = 64, max_failures: int = 5, transient: IsTransient = is_transient) -> None:
        self.connection = connection
        self.service = service
        self.handler = handler
        self.faults = faults
        self.prefetch = prefetch
        self.max_failures = max_failures
        self.transient = transient
        self.in_flight = 0  # delivered and not yet acked, nacked or rejected
        self.settled = 0  # deliveries finished (acked, put back or parked): grows while anything moves
        self.parked = 0
        self._failures: dict[str, int] = {}  # the message's own failures, by message id
        self._waits = 0  # consecutive transient errors: the backoff while a server is away

    async def start(self) -> None:
        await self.connection.subscribe(self._open)

    async def _open(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        channel.close_callbacks.add(self.connection.channel_lost)
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.get_queue(self.connection.topology.queue(self.service), ensure=False)
        await queue.consume(self._deliver)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        try:
            await self._handle(message)
        except CONNECTION_EXCEPTIONS as exc:  # the channel went away under the ack: the message comes back
            log.info("message %s will be redelivered (%r)", message.message_id, exc)
        except Exception:  # never leave a delivery unsettled: it would hold a prefetch slot for good
            log.exception("delivering message %s failed; putting it back", message.message_id)
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await message.nack(requeue=True)
        finally:
            self.in_flight -= 1
            self.settled += 1

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.from_bytes(message.body)
        except InvalidEnvelope as exc:
            log.error("poison message %s parked: %s", message.message_id, exc)
            await self._park(message)
            return
        key = str(envelope.message_id)
        try:
            action = await self.faults.hit("bus.deliver")
            await self.handler(envelope)
            if action == "duplicate":
                await self.handler(envelope)
        except Exception as exc:
            if self.transient(exc):
                self._waits += 1
                if self._waits == 1 or self._waits % 100 == 0:
                    log.warning("message %s (%s) waits for a server (%r); retrying", key, envelope.type, exc)
                await asyncio.sleep(capped_backoff(self._waits, 0.05))
                await message.nack(requeue=True)
                return
            failures = self._failures.get(key, 0) + 1
            if failures >= self.max_failures:
                self._failures.pop(key, None)
                log.error("message %s (%s) failed %d times, parked: %r", key, envelope.type, failures, exc)
                await self._park(message)
                return
            self._failures[key] = failures
            log.warning("message %s (%s) failed (%d of %d), requeued: %r", key, envelope.type, failures,
                        self.max_failures, exc)
            await asyncio.sleep(capped_backoff(failures, 0.05))
            await message.nack(requeue=True)
            return
        self._waits = 0
        self._failures.pop(key, None)
        await message.ack()

    async def _park(self, message: AbstractIncomingMessage) -> None:
        await message.reject(requeue=False)  # dead-lettered to <service>.parking
        self.parked += 1
