"""The consumer: delivers the messages of a service's queue to its handler in batches, and acks each message
after the transaction that applied it committed.

* Whatever has arrived when the handler is free goes in one batch (at most `batch` messages): the handler
  applies it in one transaction. Under load batches grow by themselves; when the queue is quiet a batch is a
  single message, so nothing waits for a batch to fill.
* A batch that fails is applied again message by message, so one bad message cannot sink the others: each
  then fails or succeeds on its own, as below.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from opentelemetry.trace import Span

from services.common.envelope import Envelope, InvalidEnvelope
from services.common.faults import FaultInjector
from services.common.tracing import consumer_spans, current, failed, start_consuming
from services.messaging.connection import BrokerConnection, capped_backoff
from services.messaging.failures import is_transient

log = logging.getLogger("txlab.consumer")

Handler = Callable[[Sequence[Envelope]], Awaitable[None]]  # applies a batch in one transaction, or raises
IsTransient = Callable[[BaseException], bool]


@dataclass(frozen=True)
class Delivery:
    message: AbstractIncomingMessage
    envelope: Envelope
    channel: int  # which channel delivered it (its opening number): read without touching a closed channel
    twice: bool = False  # the bus.deliver fault's "duplicate": hand it to the handler twice


class Consumer:
    def __init__(self, connection: BrokerConnection, service: str, handler: Handler, faults: FaultInjector, *,
                 prefetch: int = 64, batch: int = 64, max_failures: int = 5,
                 transient: IsTransient = is_transient) -> None:
        self.connection = connection
        self.service = service
        self.handler = handler
        self.faults = faults
        self.prefetch = prefetch
        self.batch = batch
        self.max_failures = max_failures
        self.transient = transient
        self.in_flight = 0  # delivered and not yet acked, nacked or rejected
        self.settled = 0  # deliveries finished (acked, put back or parked): grows while anything moves
        self.parked = 0
        self.batches = 0  # batches applied in one transaction
        self._arrived: list[tuple[AbstractIncomingMessage, int]] = []  # each with the number of its channel
        self._channels = 0
        self._settled: set[int] = set()  # id(message) of those settled or scheduled to be, in the batch at hand
        self._wake = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None  # applies the batches; the service exits if it dies
        self._failures: dict[str, int] = {}  # the message's own failures, by message id
        self._waits = 0  # consecutive transient errors: the backoff while a server is away
        self._later: set[asyncio.Task[None]] = set()  # messages put back once their backoff is over
        self._spans: dict[int, Span] = {}  # id(message) -> its consumer span, in the batch at hand

    async def start(self) -> None:
        self.worker = asyncio.create_task(self._work(), name=f"{self.service}-consumer")
        await self.connection.subscribe(self._open)

    async def stop(self) -> None:
        for task in (self.worker, *self._later):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _open(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        channel.close_callbacks.add(self.connection.channel_lost)
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.get_queue(self.connection.topology.queue(self.service), ensure=False)
        self._channels += 1
        number = self._channels

        async def arrive(message: AbstractIncomingMessage) -> None:
            self.in_flight += 1
            self._arrived.append((message, number))
            self._wake.set()

        await queue.consume(arrive)

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._arrived:
                taken, self._arrived = self._arrived[:self.batch], self._arrived[self.batch:]
                try:
                    await self._apply(taken)
                except Exception:  # never leave a delivery unsettled: it would hold a prefetch slot for good
                    log.exception("delivering %d messages failed; putting them back", len(taken))
                    for message, _ in taken:
                        if id(message) not in self._settled:
                            await self._settle(message.nack(requeue=True), [message])
                finally:
                    self._settled.clear()
                    for span in self._spans.values():
                        span.end()
                    self._spans.clear()

    async def _apply(self, arrivals: list[tuple[AbstractIncomingMessage, int]]) -> None:
        deliveries: list[Delivery] = []
        for message, channel in arrivals:
            try:
                envelope = Envelope.from_bytes(message.body)
            except InvalidEnvelope as exc:
                log.error("poison message %s parked: %s", message.message_id, exc)
                await self._park(message)
                continue
            self._spans[id(message)] = start_consuming(
                envelope.type, message.headers, envelope.traceparent, order_id=envelope.order_id,
                message_id=envelope.message_id, service=self.service, batch=len(arrivals))
            try:
                action = await self.faults.hit("bus.deliver")
            except Exception as exc:
                self._failed(Delivery(message, envelope, channel), exc)
                continue
            deliveries.append(Delivery(message, envelope, channel, twice=action == "duplicate"))
        if not deliveries:
            return
        spans = {d.envelope.message_id: self._spans[id(d.message)] for d in deliveries}
        try:
            # a lone message's statements (its inbox claim, its outbox rows) belong to its span too
            with consumer_spans(spans), current(next(iter(spans.values())) if len(spans) == 1 else None):
                await self.handler([e for d in deliveries for e in (d.envelope,) * (2 if d.twice else 1)])
        except Exception as exc:
            if len(deliveries) == 1:
                self._failed(deliveries[0], exc)
                return
            server_away = False
            for delivery in deliveries:  # one at a time: only the message at fault fails
                if server_away:  # no use trying the rest now: they wait out the backoff too
                    self._failed(delivery, exc)
                    continue
                try:
                    span = spans[delivery.envelope.message_id]
                    with consumer_spans({delivery.envelope.message_id: span}), current(span):
                        await self.handler([delivery.envelope] * (2 if delivery.twice else 1))
                except Exception as single:
                    self._failed(delivery, single)
                    exc, server_away = single, self.transient(single)
                else:
                    await self._applied(delivery)
            return
        self.batches += 1
        self._waits = 0
        for delivery in deliveries:
            self._failures.pop(str(delivery.envelope.message_id), None)
        messages = [d.message for d in deliveries]
        last = messages[-1]
        if len(messages) > 1 and not self._later and len({d.channel for d in deliveries}) == 1:
            # every earlier delivery of this channel is settled (none waits out a backoff): one ack, with
            # `multiple`, settles exactly this batch
            await self._settle(last.ack(multiple=True), messages)
        else:
            for message in messages:
                await self._settle(message.ack(), [message])

    async def _applied(self, delivery: Delivery) -> None:
        self._waits = 0
        self._failures.pop(str(delivery.envelope.message_id), None)
        await self._settle(delivery.message.ack(), [delivery.message])

    def _failed(self, delivery: Delivery, exc: Exception) -> None:
        """Count the failure if it is the message's own, then park the message or put it back after a backoff
        (without holding up the messages behind it)."""
        span = self._spans.get(id(delivery.message))
        if span is not None:
            failed(span, exc)
        order_id = delivery.envelope.order_id
        with current(span), structlog.contextvars.bound_contextvars(order_id=str(order_id) if order_id else None):
            self._retry_or_park(delivery, exc)

    def _retry_or_park(self, delivery: Delivery, exc: Exception) -> None:
        key, envelope = str(delivery.envelope.message_id), delivery.envelope
        if self.transient(exc):
            self._waits += 1
            if self._waits == 1 or self._waits % 100 == 0:
                log.warning("message %s (%s) waits for a server (%r); retrying", key, envelope.type, exc)
            self._later_back(delivery.message, capped_backoff(self._waits, 0.05))
            return
        failures = self._failures.get(key, 0) + 1
        if failures >= self.max_failures:
            self._failures.pop(key, None)
            log.error("message %s (%s) failed %d times, parked: %r", key, envelope.type, failures, exc)
            self._later_back(delivery.message, 0.0, park=True)
            return
        self._failures[key] = failures
        log.warning("message %s (%s) failed (%d of %d), requeued: %r", key, envelope.type, failures,
                    self.max_failures, exc)
        self._later_back(delivery.message, capped_backoff(failures, 0.05))

    def _later_back(self, message: AbstractIncomingMessage, delay: float, park: bool = False) -> None:
        self._settled.add(id(message))

        async def back() -> None:
            await asyncio.sleep(delay)
            if park:
                await self._park(message)
            else:
                await self._settle(message.nack(requeue=True), [message])

        task = asyncio.create_task(back())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _settle(self, outcome: Awaitable[None], messages: list[AbstractIncomingMessage]) -> None:
        self._settled.update(id(m) for m in messages)  # counted once, whether or not the channel still takes it
        try:
            await outcome
        except CONNECTION_EXCEPTIONS as exc:  # the channel went away under the ack: the messages come back
            log.info("%d message(s) will be redelivered (%r)", len(messages), exc)
        finally:
            self.in_flight -= len(messages)
            self.settled += len(messages)

    async def _park(self, message: AbstractIncomingMessage) -> None:
        await self._settle(message.reject(requeue=False), [message])  # dead-lettered to <service>.parking
        self.parked += 1
