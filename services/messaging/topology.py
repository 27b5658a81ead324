"""The bus's topology: one topic exchange, one durable queue per consuming service with its bindings, and
a dead-letter exchange routing to a parking queue per service.

Every process declares the whole topology, not only its own queue, each time it connects: an event
published while its consumer has not started yet still lands in that consumer's queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel

from services.common.settings import Settings

# Which events each service consumes: the routing keys its queue is bound to.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "order": ("stock.reserved", "stock.rejected", "stock.released",
              "payment.succeeded", "payment.failed", "payment.refunded"),
    "inventory": ("order.created", "order.paid", "order.cancelled"),
    "payment": ("order.created", "order.cancelled"),
}


@dataclass(frozen=True)
class Topology:
    """Names (all behind one prefix, which isolates test runs) and who is bound to what."""

    prefix: str = ""
    subscriptions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(SUBSCRIPTIONS))

    @property
    def exchange(self) -> str:
        return f"{self.prefix}txlab.events"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}txlab.dlx"

    def queue(self, service: str) -> str:
        return f"{self.prefix}{service}.events"

    def parking(self, service: str) -> str:
        return f"{self.prefix}{service}.parking"

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self.subscriptions)

    def check_handlers(self, service: str, event_types: set[str]) -> None:
        """Refuse to start a consumer whose handlers and bindings disagree: an event it handles but is not
        bound to would never arrive; one it is bound to but cannot handle would be acked unread."""
        bound = set(self.subscriptions.get(service, ()))
        if bound != event_types:
            raise ValueError(f"{service}: handlers for {sorted(event_types)} but bindings for {sorted(bound)}")

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare every exchange, queue, binding and dead-letter route (idempotent)."""
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(self.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
        for service, keys in self.subscriptions.items():
            parking = await channel.declare_queue(self.parking(service), durable=True)
            await parking.bind(dlx, routing_key=service)
            queue = await channel.declare_queue(self.queue(service), durable=True, arguments={
                "x-dead-letter-exchange": self.dlx, "x-dead-letter-routing-key": service})
            for key in keys:
                await queue.bind(exchange, routing_key=key)


def topology_of(settings: Settings) -> Topology:
    """The topology of the deployment `settings` describe."""
    return Topology(settings.bus_prefix)
