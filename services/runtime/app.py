"""The shape every domain service shares: a FastAPI app whose lifespan owns the database engine, the
connection to RabbitMQ, the outbox relay, the event consumer, the cache and the fault points.

A service starts and serves while RabbitMQ is down: the connection is opened in the background and the relay
and the consumer resume on their own once it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request

from services.cache.membership import current_nodes
from services.cache.sharded import ShardedCache
from services.common.db import make_engine
from services.common.faults import FaultInjector
from services.common.settings import Settings, get_settings
from services.common.tracing import traced_client
from services.messaging.connection import BrokerConnection
from services.messaging.consumer import Consumer
from services.messaging.publisher import Publisher
from services.messaging.relay import OutboxRelay
from services.messaging.topology import topology_of
from services.runtime.events import EventHandler, Prepare, apply_events
from services.runtime.http_errors import install_error_handlers
from services.runtime.internal_routes import internal_router
from services.runtime.prepared import make_pools
from services.runtime.state import Runtime, runtime
from services.runtime.telemetry import TELEMETRY, Metric, counter, gauge, install

# an outbox row is due when it waits for the relay: how many, and how late the oldest is
_OUTBOX_DUE = sa.text(
    "SELECT count(*) FILTER (WHERE status = 'PENDING' AND next_attempt_at <= now()) AS due, "
    "coalesce(extract(epoch FROM now() - min(next_attempt_at) FILTER "
    "(WHERE status = 'PENDING' AND next_attempt_at <= now())), 0) AS lag, "
    "count(*) FILTER (WHERE status = 'FAILED') AS failed, "
    "coalesce(sum(attempts) FILTER (WHERE status <> 'SENT'), 0) AS attempts "
    "FROM outbox WHERE status <> 'SENT'")
ServiceMetrics = Callable[[Runtime], Awaitable[Iterable[Metric]]]


async def service_metrics(rt: Runtime) -> list[Metric]:
    """The messaging and cache figures every service has: the outbox lag, the consumer, the cache per node."""
    async with rt.engine.connect() as conn:
        row = (await conn.execute(_OUTBOX_DUE)).one()
    s = (rt.service,)
    stats = rt.cache.stats()
    return [
        gauge("outbox_due_rows", "outbox rows waiting for the relay", ["service"], [(s, row.due)]),
        gauge("outbox_lag_seconds", "how long the oldest due outbox row has waited", ["service"], [(s, row.lag)]),
        gauge("outbox_failed_rows", "outbox rows RabbitMQ refused too often (re-send them)", ["service"],
              [(s, row.failed)]),
        gauge("outbox_unsent_attempts", "publish attempts of the rows not yet sent", ["service"],
              [(s, row.attempts)]),
        counter("outbox_published", "outbox rows published and confirmed", ["service"], [(s, rt.relay.published)]),
        counter("outbox_refused", "publishes RabbitMQ refused", ["service"], [(s, rt.relay.refused)]),
        counter("messages_parked", "messages the consumer gave up on (dead-lettered)", ["service"],
                [(s, rt.consumer.parked)]),
        gauge("consumer_in_flight", "messages delivered and not yet settled", ["service"],
              [(s, rt.consumer.in_flight)]),
        counter("consumer_batches", "batches applied in one transaction", ["service"], [(s, rt.consumer.batches)]),
        counter("events_applied", "events applied", ["service"], [(s, rt.stats["events_applied"])]),
        counter("duplicates_skipped", "deliveries the inbox recognised as duplicates", ["service"],
                [(s, rt.stats["duplicates_skipped"])]),
        gauge("bus_connected", "1 while connected to RabbitMQ", ["service"], [(s, float(rt.broker.connected))]),
        counter("cache_hits", "cache reads answered by a node", ["service", "node"],
                [((rt.service, node), st.hits) for node, st in stats.items()]),
        counter("cache_misses", "cache reads a node could not answer", ["service", "node"],
                [((rt.service, node), st.misses) for node, st in stats.items()]),
        gauge("cache_hit_ratio", "hits / reads, per cache node", ["service", "node"],
              [((rt.service, node), st.hit_ratio) for node, st in stats.items()]),
    ]

log = logging.getLogger("txlab.service")


def exit_if_failed(task: asyncio.Task[None]) -> None:
    """A loop that stopped for good (the relay, the consumer, a background loop) would leave work undone behind
    a healthy /health: let the supervisor restart the whole process instead."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s stopped: %r; exiting so the supervisor restarts the service", task.get_name(),
                     task.exception())
        logging.shutdown()
        os._exit(1)


def create_service_app(service: str, router: APIRouter, handlers: dict[str, EventHandler],
                       settings: Settings | None = None,
                       background: Sequence[Callable[[Runtime], Awaitable[None]]] = (),
                       prepared: bool = False, prepare: Prepare | None = None,
                       metrics: ServiceMetrics | None = None) -> FastAPI:
    """The service's app; `background` loops run beside the relay for the app's life. A participant of 2PC and
    3PC (`prepared`) also has a psycopg pool for its prepared transactions. `prepare` loads, once per batch of
    events, what their handlers will ask for. `metrics` adds the service's own to the shared ones."""
    settings = settings or get_settings()
    topology = topology_of(settings)
    topology.check_handlers(service, set(handlers))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faults = FaultInjector(service, settings.data_dir / "faults")
        engine = make_engine(settings, service)
        broker = BrokerConnection(settings.amqp, topology, f"txlab-{service}")
        publisher = Publisher(broker, faults, settings.publish_confirm_timeout)
        relay = OutboxRelay(engine, publisher, settings, service, faults,
                            relay_id=f"{service}@{socket.gethostname()}:{settings.port(service)}")
        http = traced_client(timeout=5.0)
        cache = ShardedCache.from_env(settings, current_nodes(settings))
        await cache.start()
        consumer = Consumer(broker, service, lambda batch: apply_events(app.state.rt, handlers, batch, prepare), faults,
                            prefetch=settings.consumer_prefetch, batch=settings.consumer_batch,
                            max_failures=settings.consumer_max_failures)
        app.state.rt = Runtime(service, settings, engine, broker, publisher, consumer, relay, faults, http, cache)
        if prepared:
            app.state.rt.pg = make_pools(settings, service)
            await app.state.rt.pg.open()
        await publisher.start()
        await consumer.start()
        broker.start()
        relay_task = asyncio.create_task(relay.run(), name=f"{service}-relay")
        relay_task.add_done_callback(exit_if_failed)
        loops = [asyncio.create_task(loop(app.state.rt), name=f"{service}-{loop.__name__}") for loop in background]
        for task in (*loops, consumer.worker):
            if task is not None:
                task.add_done_callback(exit_if_failed)
        try:
            yield
        finally:
            for task in (relay_task, *loops):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await consumer.stop()
            await broker.close()
            await http.aclose()
            await cache.close()
            await engine.dispose()
            if app.state.rt.pg is not None:
                await app.state.rt.pg.close()

    app = FastAPI(title=f"txlab {service} service", lifespan=lifespan, telemetry=TELEMETRY)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(internal_router(service))

    async def collect() -> list[Metric]:
        rt = getattr(app.state, "rt", None)
        if rt is None:  # scraped before the service started: its process figures only
            return []
        return [*await service_metrics(rt), *(await metrics(rt) if metrics is not None else ())]

    install(app, service, collect)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        rt = runtime(request)
        async with rt.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return {"status": "ok", "service": service, "bus": rt.broker.connected}

    return app
