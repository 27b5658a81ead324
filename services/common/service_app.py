"""The shape every domain service shares: a FastAPI app whose lifespan owns the database engine, the
bus, the outbox relay, the event consumer and the fault points; plus the token-protected internal routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.cache.membership import current_nodes
from services.cache.sharded import ShardedCache
from services.common.auth import require_token
from services.common.bus import Bus
from services.common.db import make_engine
from services.common.envelope import Envelope
from services.common.faults import POINTS, Arming, FaultInjector, FaultSpecError, InjectedFault
from services.common.outbox import OutboxRelay, UnitOfWork, resend_failed, unit_of_work
from services.common.settings import Settings, get_settings

log = logging.getLogger("txlab.service")

EventHandler = Callable[[UnitOfWork, Envelope], Awaitable[None]]
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Runtime:
    """What a running service holds; available to routes as `request.app.state.rt`."""

    service: str
    settings: Settings
    engine: AsyncEngine
    bus: Bus
    faults: FaultInjector
    relay: OutboxRelay
    http: httpx.AsyncClient  # calls to the other services
    cache: ShardedCache
    stats: Counter[str] = field(default_factory=Counter)  # events applied, duplicates skipped


def is_transient(exc: BaseException) -> bool:
    """Errors that go away by themselves: retry the message as long as it takes, never park it."""
    if isinstance(exc, OSError | TimeoutError | InjectedFault | sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        text = str(exc.orig).lower()
        return exc.connection_invalidated or "deadlock" in text or "could not serialize" in text
    return False


def runtime(request: Request) -> Runtime:
    return request.app.state.rt


async def apply_event(rt: Runtime, handlers: dict[str, EventHandler], envelope: Envelope) -> None:
    """Apply one event exactly once: inbox claim, effect and emitted events commit in one transaction."""
    handler = handlers.get(envelope.type)
    if handler is None:
        return
    async with unit_of_work(rt.engine) as uow:
        if not await uow.claim(envelope):
            rt.stats["duplicates_skipped"] += 1
            return
        await handler(uow, envelope)
        await rt.faults.hit(f"{rt.service}.before_commit")
    rt.stats["events_applied"] += 1
    await invalidate_after_commit(rt, uow)


async def invalidate_after_commit(rt: Runtime, uow: UnitOfWork) -> None:
    """Delete the cached views the committed transaction changed (after commit: a reader cannot
    reload the old value between the delete and the commit)."""
    for key in uow.stale_keys:
        await rt.cache.invalidate(key)


def _exit_if_failed(task: asyncio.Task[None]) -> None:
    """A relay that stopped for good would leave events unpublished behind a healthy /health: let the
    supervisor restart the whole process instead."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("the outbox relay stopped: %r; exiting so the supervisor restarts the service",
                     task.exception())
        logging.shutdown()
        os._exit(1)


def create_service_app(service: str, router: APIRouter, handlers: dict[str, EventHandler],
                       settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faults = FaultInjector(service, settings.data_dir / "faults")
        engine = make_engine(settings, service)
        bus = Bus(settings, service, faults)
        await bus.connect()
        relay = OutboxRelay(engine, bus, settings, service, faults)
        http = httpx.AsyncClient(timeout=5.0)
        cache = ShardedCache.from_env(settings, current_nodes(settings))
        await cache.start()
        rt = Runtime(service, settings, engine, bus, faults, relay, http, cache)
        app.state.rt = rt
        relay_task = asyncio.create_task(relay.run(), name=f"{service}-relay")
        relay_task.add_done_callback(_exit_if_failed)
        await bus.consume(handlers, lambda env: apply_event(rt, handlers, env), is_transient)
        try:
            yield
        finally:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
            await bus.close()
            await http.aclose()
            await cache.close()
            await engine.dispose()

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
        return {"status": "ok", "service": service, "bus": rt.bus.connected}

    return app


def install_error_handlers(app: FastAPI) -> None:
    """Bad input is a 4xx with a message; an unavailable dependency a 503; never a stack trace."""

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending input is not echoed back: it may not even be encodable (a lone surrogate)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(sa.exc.DBAPIError)
    async def database_error(_: Request, exc: sa.exc.DBAPIError) -> JSONResponse:
        if isinstance(exc, sa.exc.DataError):
            return JSONResponse({"detail": "the database refused this input"}, status_code=422)
        return JSONResponse({"detail": "the database could not serve this request"}, status_code=503)

    @app.exception_handler(InjectedFault)
    async def injected(_: Request, exc: InjectedFault) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(OSError)
    async def unavailable(_: Request, exc: OSError) -> JSONResponse:
        return JSONResponse({"detail": f"a dependency is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(sa.exc.OperationalError)
    async def db_unavailable(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database is unavailable"}, status_code=503)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refuse = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await refuse(scope, receive, send)


class CacheNode(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^rediss?://", max_length=500)


class ArmRequest(BaseModel):
    point: str
    action: str
    delay_ms: int = Field(0, ge=0, le=60_000)
    times: int | None = Field(None, ge=1)
    probability: float = Field(1.0, gt=0.0, le=1.0)


class ArmInService(ArmRequest):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)  # same in every service


def internal_router(service: str) -> APIRouter:
    """Routes the admin API fans out to: fault arming and the failed outbox rows."""
    r = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)

    @r.get("/faults")
    async def list_faults(request: Request) -> list[dict[str, Any]]:
        return [a | {"service": service} for a in runtime(request).faults.status()]

    @r.get("/faults/points")
    async def points() -> list[dict[str, Any]]:
        return [{"name": p.name, "description": p.description, "actions": sorted(p.actions)}
                for p in POINTS.values() if service in p.services]

    @r.post("/faults", status_code=201)
    async def arm(body: ArmInService, request: Request) -> dict[str, Any]:
        try:
            arming = Arming(**body.model_dump())
            runtime(request).faults.arm(arming)
        except FaultSpecError as exc:
            raise HTTPException(422, str(exc)) from exc
        return vars(arming) | {"service": service}

    @r.delete("/faults")
    async def disarm(request: Request, point: str | None = None) -> dict[str, str]:
        runtime(request).faults.disarm(point)
        return {"disarmed": point or "all"}

    @r.get("/stats")
    async def stats(request: Request) -> dict[str, int]:
        rt = runtime(request)
        return dict(rt.stats) | {"relay_published": rt.relay.published}

    @r.get("/cache")
    async def cache_info(request: Request) -> dict[str, Any]:
        cache = runtime(request).cache
        return cache.ring_info() | {"stats": {n: vars(st) for n, st in cache.stats().items()}}

    @r.post("/cache/nodes")
    async def cache_add(body: CacheNode, request: Request) -> dict[str, float]:
        cache = runtime(request).cache
        if body.name in cache.nodes:
            return {"moved_share": 0.0}
        return {"moved_share": await cache.add_node(body.name, body.url)}

    @r.delete("/cache/nodes/{name:path}")
    async def cache_remove(name: str, request: Request) -> dict[str, float]:
        cache = runtime(request).cache
        if name not in cache.nodes:
            return {"moved_share": 0.0}
        return {"moved_share": await cache.remove_node(name)}

    @r.post("/parked/replay")
    async def replay_parked(request: Request, purge: bool = False) -> dict[str, int]:
        moved = await runtime(request).bus.replay_parked(purge)
        return {"purged" if purge else "replayed": moved}

    @r.get("/outbox")
    async def outbox(request: Request, status: str = "FAILED", limit: int = 100) -> list[dict[str, Any]]:
        if status not in ("PENDING", "SENT", "FAILED"):
            raise HTTPException(422, "status must be PENDING, SENT or FAILED")
        async with runtime(request).engine.connect() as conn:
            rows = await conn.execute(sa.text(
                "SELECT id, order_id, routing_key, status, attempts, next_attempt_at, last_error, created_at "
                "FROM outbox WHERE status = :s ORDER BY created_at LIMIT :n"),
                {"s": status, "n": max(1, min(limit, 1000))})
            return [dict(r._mapping) | {"service": service} for r in rows]

    @r.post("/outbox/resend")
    async def resend(request: Request, id: uuid.UUID | None = None) -> dict[str, int]:
        return {"resent": await resend_failed(runtime(request).engine, id)}

    return r
