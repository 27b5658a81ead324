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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request

from services.cache.membership import current_nodes
from services.cache.sharded import ShardedCache
from services.common.db import make_engine
from services.common.faults import FaultInjector
from services.common.settings import Settings, get_settings
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

log = logging.getLogger("txlab.service")


def _exit_if_failed(task: asyncio.Task[None]) -> None:
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
                       prepared: bool = False, prepare: Prepare | None = None) -> FastAPI:
    """The service's app; `background` loops run beside the relay for the app's life. A participant of 2PC and
    3PC (`prepared`) also has a psycopg pool for its prepared transactions. `prepare` loads, once per batch of
    events, what their handlers will ask for."""
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
        http = httpx.AsyncClient(timeout=5.0)
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
        relay_task.add_done_callback(_exit_if_failed)
        loops = [asyncio.create_task(loop(app.state.rt), name=f"{service}-{loop.__name__}") for loop in background]
        for task in (*loops, consumer.worker):
            if task is not None:
                task.add_done_callback(_exit_if_failed)
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

    app = FastAPI(title=f"txlab {service} service", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(internal_router(service))

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        rt = runtime(request)
        async with rt.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return {"status": "ok", "service": service, "bus": rt.broker.connected}

    return app
