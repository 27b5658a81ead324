"""The half-message broker: RocketMQ-style transactional messages, as a service of our own (RabbitMQ has no
half messages). A FastAPI app on TXLAB_BROKER_PORT (8010) with its own database, `<prefix>_broker`.

    POST /messages                      {"topic", "body", "producer", "check_url"} -> 201 {"id", "state": "HALF"}
    POST /messages/{id}/commit          idempotent; 409 after a rollback
    POST /messages/{id}/rollback        idempotent; 409 after a commit
    POST /messages/{id}/recheck         check an undecided (PARKED) message back now
    GET  /messages/{id}                 state and history: transitions, check-backs, delivery attempts
    GET  /messages?state=&limit=&offset=

Every route but /health needs the installation's admin token. A check_url must be http(s) on a host of
this installation (see `Settings.check_hosts`): the broker cannot be used to send requests elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker import store
from broker.store import Conflict, Decision, NotFound, State
from broker.workers import CheckBack, Delivery
from services.common.auth import require_token
from services.common.db import make_engine
from services.common.faults import FaultInjector
from services.common.settings import Settings, get_settings
from services.common.tracing import traced_client
from services.messaging.connection import BrokerConnection
from services.messaging.publisher import Publisher
from services.messaging.topology import topology_of
from services.runtime.app import exit_if_failed
from services.runtime.http_errors import install_error_handlers
from services.runtime.internal_routes import fault_routes
from services.runtime.telemetry import TELEMETRY, Metric, counter, gauge, install

TOPIC = re.compile(r"^[a-z][a-z0-9_-]{0,62}(\.[a-z][a-z0-9_-]{0,62}){1,3}$")


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(max_length=255, description="the routing key, e.g. order.created")
    body: dict[str, Any]
    producer: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    check_url: str = Field(max_length=2000)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not TOPIC.match(v):
            raise ValueError("a topic is two to four dot-separated lowercase words, e.g. order.created")
        return v


def allowed_check_url(url: str, hosts: frozenset[str]) -> str | None:
    """Why `url` may not be checked back, or None if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "check_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "check_url must be an http(s) URL"
    if parts.username or parts.password:
        return "check_url may not carry credentials"
    host = parts.hostname.lower()
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    if host not in hosts:
        return f"check_url's host {host!r} is not one of this installation's ({', '.join(sorted(hosts))})"
    if port is not None and not 0 < port < 65536:
        return "check_url's port is out of range"
    return None


def _id(message_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(message_id)
    except ValueError:
        raise HTTPException(404, f"no message {message_id!r}") from None


def create_router() -> APIRouter:
    r = APIRouter(dependencies=[Depends(require_token)])

    @r.post("/messages", status_code=201)
    async def send_half(m: NewMessage, request: Request) -> dict[str, Any]:
        st = request.app.state
        why = allowed_check_url(m.check_url, st.settings.check_hosts())
        if why is not None:
            raise HTTPException(422, why)
        message_id = await store.create(st.engine, m.topic, m.body, m.producer, m.check_url,
                                        st.settings.broker_immunity_seconds)
        return {"id": str(message_id), "state": State.HALF}

    async def _decide(message_id: str, decision: Decision, request: Request) -> dict[str, Any]:
        st = request.app.state
        try:
            state, changed = await store.decide(st.engine, _id(message_id), decision, by="producer")
        except NotFound:
            raise HTTPException(404, f"no message {message_id!r}") from None
        except Conflict as exc:
            raise HTTPException(409, f"cannot {decision.value.lower()}: {exc}") from None
        if state is State.COMMITTED:
            st.delivery.wake.set()
        return {"id": message_id, "state": state, "changed": changed}

    @r.post("/messages/{message_id}/commit")
    async def commit(message_id: str, request: Request) -> dict[str, Any]:
        return await _decide(message_id, Decision.COMMIT, request)

    @r.post("/messages/{message_id}/rollback")
    async def rollback(message_id: str, request: Request) -> dict[str, Any]:
        return await _decide(message_id, Decision.ROLLBACK, request)

    @r.post("/messages/{message_id}/recheck")
    async def recheck(message_id: str, request: Request) -> dict[str, Any]:
        st = request.app.state
        mid = _id(message_id)
        try:
            before = await store.get(st.engine, mid)
        except NotFound:
            raise HTTPException(404, f"no message {message_id!r}") from None
        if before["state"] not in (State.HALF, State.PARKED):
            raise HTTPException(409, f"the message is already {before['state']}: nothing to check back")
        if await st.checkback.recheck(mid) is None:
            raise HTTPException(409, "the message is being checked back or was decided meanwhile; read it again")
        return await store.get(st.engine, mid)

    @r.get("/messages/{message_id}")
    async def read(message_id: str, request: Request) -> dict[str, Any]:
        try:
            return await store.get(request.app.state.engine, _id(message_id))
        except NotFound:
            raise HTTPException(404, f"no message {message_id!r}") from None

    @r.get("/messages")
    async def listing(request: Request, state: State | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0) -> dict[str, Any]:  # a bigint
        return await store.page(request.app.state.engine, state, limit, offset)

    @r.get("/stats")
    async def stats(request: Request) -> dict[str, int]:
        return await store.counts(request.app.state.engine)

    return r


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    me = f"broker@{socket.gethostname()}:{settings.broker_port}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings, "broker")
        connection = BrokerConnection(settings.amqp, topology_of(settings), "txlab-broker")
        faults = app.state.faults
        publisher = Publisher(connection, faults, settings.publish_confirm_timeout)
        http = traced_client()
        st = app.state
        st.settings, st.engine = settings, engine
        st.checkback = CheckBack(engine, http, settings, me, faults)
        st.delivery = Delivery(engine, publisher, settings, me, faults)
        await publisher.start()
        connection.start()
        with contextlib.suppress(OSError, ConnectionError):
            await store.release_own(engine, me)  # this process's previous run died holding them
        tasks = [asyncio.create_task(st.checkback.run(), name="broker-checkback"),
                 asyncio.create_task(st.delivery.run(), name="broker-delivery")]
        for task in tasks:  # a loop that stopped would leave messages undelivered behind a healthy /health
            task.add_done_callback(exit_if_failed)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await connection.close()
            await http.aclose()
            await engine.dispose()

    app = FastAPI(title="txlab half-message broker", lifespan=lifespan, telemetry=TELEMETRY)
    app.state.settings = settings
    app.state.faults = FaultInjector("broker", settings.data_dir / "faults")
    install_error_handlers(app)
    internal = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)
    fault_routes(internal, "broker", lambda request: request.app.state.faults)
    app.include_router(internal)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def metrics() -> list[Metric]:
        by_state = await store.counts(app.state.engine)
        return [gauge("half_messages", "half messages by state", ["state"], [((k,), v) for k, v in by_state.items()]),
                counter("halfmsg_checks", "check-backs by the producer's answer", ["answer"],
                        [((k,), v) for k, v in app.state.checkback.answers.items()])]

    install(app, "broker", metrics)

    app.include_router(create_router())
    return app
