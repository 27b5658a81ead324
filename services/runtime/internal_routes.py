"""The token-protected routes the admin API fans out to: fault arming, messaging state, the cache ring,
failed outbox rows and parked messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from services.common.auth import require_token
from services.common.faults import POINTS, Arming, FaultInjector, FaultSpecError, process_kind
from services.messaging.outbox import OUTBOX, OutboxStatus, resend_failed
from services.messaging.parking import replay_parked
from services.runtime.state import runtime


class CacheNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^rediss?://", max_length=500)


class ArmRequest(BaseModel):
    # strict numbers and no unknown fields: {"p": 0} (the CLI's spelling) once armed a fault that fires always
    model_config = ConfigDict(extra="forbid")

    point: str
    action: str
    delay_ms: StrictInt = Field(0, ge=0, le=60_000)
    times: StrictInt | None = Field(None, ge=1)
    probability: StrictFloat = Field(1.0, gt=0.0, le=1.0)


class ArmInService(ArmRequest):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)  # same in every service


def fault_routes(r: APIRouter, service: str, faults_of: Callable[[Request], FaultInjector]) -> None:
    """Arming, listing and disarming this process's fault points (the admin API fans out to these)."""

    @r.get("/faults")
    async def list_faults(request: Request) -> list[dict[str, Any]]:
        return [a | {"service": service} for a in faults_of(request).status()]

    @r.get("/faults/points")
    async def points() -> list[dict[str, Any]]:
        return [{"name": p.name, "description": p.description, "actions": sorted(p.actions)}
                for p in POINTS.values() if process_kind(service) in p.services]

    @r.post("/faults", status_code=201)
    async def arm(body: ArmInService, request: Request) -> dict[str, Any]:
        try:
            arming = Arming(**body.model_dump())
            faults_of(request).arm(arming)
        except FaultSpecError as exc:
            raise HTTPException(422, str(exc)) from exc
        return vars(arming) | {"service": service}

    @r.delete("/faults")
    async def disarm(request: Request, point: str | None = None) -> dict[str, str]:
        faults_of(request).disarm(point)
        return {"disarmed": point or "all"}


def internal_router(service: str) -> APIRouter:
    r = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)
    fault_routes(r, service, lambda request: runtime(request).faults)

    @r.get("/stats")
    async def stats(request: Request) -> dict[str, int]:
        rt = runtime(request)
        return dict(rt.stats) | {"relay_published": rt.relay.published, "relay_refused": rt.relay.refused,
                                 "consumer_parked": rt.consumer.parked, "consumer_batches": rt.consumer.batches}

    @r.get("/messaging")
    async def messaging(request: Request) -> dict[str, Any]:
        """What this service holds in flight: the checker waits for 0 before it judges convergence."""
        rt = runtime(request)
        return {"service": service, "connected": rt.broker.connected, "in_flight": rt.consumer.in_flight,
                "progress": rt.consumer.settled + rt.relay.published + rt.relay.refused,
                "connections_opened": rt.broker.opened}

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
    async def replay(request: Request, purge: bool = False) -> dict[str, int]:
        rt = runtime(request)
        moved = await replay_parked(rt.settings.amqp, rt.broker.topology, service, purge)
        return {"purged" if purge else "replayed": moved}

    @r.get("/outbox")
    async def outbox(request: Request, status: str = "FAILED", limit: int = 100) -> list[dict[str, Any]]:
        if status not in OutboxStatus.__members__:
            raise HTTPException(422, f"status must be one of {', '.join(OutboxStatus)}")
        columns = [OUTBOX.c[n] for n in ("id", "order_id", "routing_key", "status", "attempts", "next_attempt_at",
                                         "last_error", "created_at")]
        query = (sa.select(*columns).where(OUTBOX.c.status == status).order_by(OUTBOX.c.created_at)
                 .limit(max(1, min(limit, 1000))))
        async with runtime(request).engine.connect() as conn:
            return [dict(r._mapping) | {"service": service} for r in await conn.execute(query)]

    @r.post("/outbox/resend")
    async def resend(request: Request, id: uuid.UUID | None = None) -> dict[str, int]:
        return {"resent": await resend_failed(runtime(request).engine, id)}

    return r
