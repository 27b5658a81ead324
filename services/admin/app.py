"""The admin API (token-protected): arm faults in the services, re-send failed outbox rows, check invariants."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from redis.exceptions import RedisError

from services.admin import control
from services.admin.ui import install_ui
from services.cache.config import node_name
from services.cache.membership import current_nodes, save_nodes
from services.cache.sharded import ShardedCache
from services.checker import CannotCheck, run_checks
from services.common.auth import require_token
from services.common.faults import POINTS, Arming, FaultSpecError
from services.common.settings import SERVICES, Settings, get_settings
from services.common.tracing import traced_client
from services.coordinator.client import CoordinatorClient, CoordinatorUnavailable
from services.runtime.http_errors import install_error_handlers
from services.runtime.internal_routes import ArmRequest, CacheNode
from services.runtime.telemetry import ALL_KINDS, KINDS, TELEMETRY, TRACE_ID, install, recent


def fault_processes(settings: Settings) -> tuple[str, ...]:
    """The processes with fault points: the services, the broker and every coordinator replica."""
    return (*SERVICES, "broker", *settings.coordinators)


def _where(settings: Settings, services: tuple[str, ...]) -> tuple[str, ...]:
    """A fault point's processes: `coordinator` stands for every replica."""
    return tuple(p for s in services for p in (settings.coordinators if s == "coordinator" else (s,)))


class ArmAcross(ArmRequest):
    service: str | None = None  # None: every service that has the point


async def _fan_out(request: Request, method: str, path: str, services: tuple[str, ...] | list[str],
                   **kwargs: Any) -> list[Any]:
    """Each service's answer to `method path`. A coordinator replica that is not running is left out (a
    system may run without its coordinator; a replica that is down is restarted with the armings it saved,
    and a disarming reaches it through the shared fired counts): unless every replica asked is down."""
    settings: Settings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.http
    headers = {"authorization": f"Bearer {settings.admin_token}"}

    async def one(service: str) -> Any:
        try:
            response = await client.request(method, f"{settings.url(service)}{path}", headers=headers, **kwargs)
        except httpx.ConnectError:
            if service.startswith("coordinator-"):
                return _DOWN
            raise HTTPException(503, f"the {service} service is unreachable (ConnectError); it may be restarting, "
                                "try again") from None
        except httpx.HTTPError as exc:
            raise HTTPException(503, f"the {service} service is unreachable ({exc.__class__.__name__}); "
                                "it may be restarting, try again") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:300]}
        if response.status_code >= 400:
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise HTTPException(response.status_code if response.status_code < 500 else 502,
                                f"the {service} service answered {response.status_code}: {detail}")
        return body

    answers = await asyncio.gather(*(one(s) for s in services))
    if answers and all(answer is _DOWN for answer in answers):
        raise HTTPException(503, f"no coordinator replica is running ({', '.join(services)})")
    return [answer for answer in answers if answer is not _DOWN]


_DOWN = object()  # a coordinator replica that is not running


async def merged_telemetry(request: Request, trace_id: str | None, order_id: str | None, since: float,
                           limit: int, kinds: str = ALL_KINDS) -> dict[str, Any]:
    """Every process's telemetry ring (admin's own included), merged; a process that is down is left out. An
    order's trace is found by the first process whose spans name the order."""
    settings: Settings = request.app.state.settings
    processes = (*SERVICES, "broker", *settings.coordinators)
    params = {"since": since, "limit": limit, "kinds": kinds} | ({"order_id": order_id} if order_id else {})
    if trace_id:
        params["trace_id"] = trace_id
    answers = await _gather_quietly(request, processes, params)
    if order_id and not trace_id:  # the whole trace, from every process, not only the spans naming the order
        found = next((s["trace_id"] for a in answers for s in a["spans"]), None)
        if found is not None:
            answers = await _gather_quietly(request, processes, params | {"trace_id": found})
    answers.append(recent(params.get("trace_id"), order_id, since, limit, kinds))
    merged: dict[str, list[dict[str, Any]]] = {"spans": [], "logs": [], "faults": []}
    for answer in answers:
        for kind in merged:
            merged[kind].extend(answer[kind])
    merged["spans"].sort(key=lambda s: s["start"])
    merged["logs"].sort(key=lambda entry: entry["ts"])
    merged["faults"].sort(key=lambda f: f["ts"])
    return {kind: items[-limit:] for kind, items in merged.items()} | {
        "processes": sorted(a["process"] for a in answers)}


async def _gather_quietly(request: Request, processes: tuple[str, ...], params: dict[str, Any]) -> list[Any]:
    """Each process's /internal/telemetry; one that does not answer is left out (it may be restarting)."""
    settings: Settings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.http
    headers = {"authorization": f"Bearer {settings.admin_token}"}

    async def one(process: str) -> Any:
        try:
            response = await client.get(f"{settings.url(process)}/internal/telemetry", headers=headers,
                                        params=params, timeout=2.0)  # one hung process must not stall all
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError):
            return None

    return [a for a in await asyncio.gather(*(one(p) for p in processes)) if a is not None]


def kill_child(child: control.Child, node: int) -> dict[str, Any]:
    """Admin's answer to a kill: 409 when no supervisor runs the child, or it is held down already."""
    try:
        return {"killed": node, "pid": control.kill_and_hold(child), "held": True}
    except control.ControlRefused as exc:
        raise HTTPException(409, str(exc)) from exc


def restart_child(child: control.Child, node: int) -> dict[str, Any]:
    """Admin's answer to a restart: 409 when no supervisor runs the child."""
    try:
        return {"node": node, "done": control.release(child)}
    except control.ControlRefused as exc:
        raise HTTPException(409, str(exc)) from exc


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http = traced_client(timeout=10.0)
        app.state.cache = ShardedCache.from_env(settings, current_nodes(settings))
        await app.state.cache.start()
        yield
        await app.state.cache.close()
        await app.state.http.aclose()

    app = FastAPI(title="txlab admin", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=TELEMETRY)
    app.state.settings = settings
    install_error_handlers(app)
    r = APIRouter(dependencies=[Depends(require_token)])

    @r.get("/faults/points")
    async def points() -> list[dict[str, Any]]:
        return [{"name": p.name, "description": p.description, "services": list(p.services),
                 "actions": sorted(p.actions)} for p in POINTS.values()]

    @r.get("/faults")
    async def armed(request: Request) -> list[dict[str, Any]]:
        """One entry per arming: how often it fired in all (what `times` limits) and in each service armed."""
        armings: dict[str, dict[str, Any]] = {}
        for row in [a for per in await _fan_out(request, "GET", "/internal/faults",
                                                                fault_processes(settings)) for a in per]:
            service, fired_here = row.pop("service"), row.pop("fired_here")
            entry = armings.setdefault(row["id"], row | {"services": {}})
            entry["services"][service] = fired_here
            entry["fired"] = max(entry["fired"], row["fired"])  # the services read the shared count one by one
        return list(armings.values())

    @r.post("/faults", status_code=201)
    async def arm(body: ArmAcross, request: Request) -> list[dict[str, Any]]:
        arming = body.model_dump(exclude={"service"}) | {"id": uuid.uuid4().hex}  # one id for every service
        try:
            Arming(**arming).validate()
        except FaultSpecError as exc:
            raise HTTPException(422, str(exc)) from exc
        where = _where(settings, POINTS[body.point].services)
        if body.service is not None:
            if body.service not in where:
                raise HTTPException(422, f"{body.point} exists only in: {', '.join(where)}")
            where = (body.service,)
        return await _fan_out(request, "POST", "/internal/faults", where, json=arming)

    @r.delete("/faults")
    async def disarm(request: Request, point: str | None = None) -> dict[str, str]:
        if point is not None and point not in POINTS:
            raise HTTPException(422, f"unknown fault point {point!r}")
        await _fan_out(request, "DELETE", "/internal/faults", fault_processes(settings),
                       params={"point": point} if point else {})
        return {"disarmed": point or "all"}

    @r.get("/outbox/failed")
    async def failed_rows(request: Request) -> list[dict[str, Any]]:
        return [row for per in await _fan_out(request, "GET", "/internal/outbox", SERVICES) for row in per]

    @r.post("/outbox/{service}/resend")
    async def resend(service: str, request: Request, id: uuid.UUID | None = None) -> dict[str, int]:
        if service not in SERVICES:
            raise HTTPException(404, f"no service {service!r}; choose one of {', '.join(SERVICES)}")
        (result,) = await _fan_out(request, "POST", "/internal/outbox/resend", [service],
                                   params={"id": str(id)} if id else {})
        return result

    @r.post("/parked/{service}/replay")
    async def replay_parked(service: str, request: Request, purge: bool = False) -> dict[str, int]:
        """Put the messages a consumer gave up on back on its queue (or, with purge, drop them)."""
        if service not in SERVICES:
            raise HTTPException(404, f"no service {service!r}; choose one of {', '.join(SERVICES)}")
        (result,) = await _fan_out(request, "POST", "/internal/parked/replay", [service],
                                   params={"purge": "true"} if purge else {})
        return result

    @r.get("/halfmsg/messages")
    async def half_messages(request: Request, state: str | None = None, limit: int = 100,
                            offset: int = 0) -> dict[str, Any]:
        """The half-message broker's messages, paged (`?state=PARKED` for those waiting for an operator)."""
        params = {"limit": limit, "offset": offset} | ({"state": state} if state else {})
        (result,) = await _fan_out(request, "GET", "/messages", ["broker"], params=params)
        return result

    @r.get("/halfmsg/messages/{message_id}")
    async def half_message(message_id: str, request: Request) -> dict[str, Any]:
        (result,) = await _fan_out(request, "GET", f"/messages/{quote(message_id, safe='')}", ["broker"])
        return result

    @r.post("/halfmsg/messages/{message_id}/{action}")
    async def resolve_half_message(message_id: str, action: str, request: Request) -> dict[str, Any]:
        """An operator's hand on a PARKED message: check it back now, or commit or roll it back."""
        if action not in ("recheck", "commit", "rollback"):
            raise HTTPException(404, f"no action {action!r}; choose recheck, commit or rollback")
        (result,) = await _fan_out(request, "POST", f"/messages/{quote(message_id, safe='')}/{action}", ["broker"])
        return result

    async def coordinator(request: Request, method: str, path: str, **kwargs: Any) -> Any:
        """The coordinator leader's answer, passed on as it is (errors included)."""
        try:
            response = await CoordinatorClient(settings, request.app.state.http).request(method, path, **kwargs)
        except CoordinatorUnavailable as exc:
            raise HTTPException(503, str(exc)) from exc
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:300]}
        if response.status_code >= 400:
            raise HTTPException(response.status_code, body.get("detail", body) if isinstance(body, dict) else body)
        return body

    @r.get("/transactions")
    async def transactions(request: Request, state: str | None = None, pattern: str | None = None,
                           limit: int = 100, offset: int = 0) -> Any:
        """The coordinator's global transactions, newest first, paged (`?state=STUCK` for those to retry)."""
        params = {"limit": limit, "offset": offset} | ({"state": state} if state else {}) | (
            {"pattern": pattern} if pattern else {})
        return await coordinator(request, "GET", "/transactions", params=params)

    @r.get("/transactions/{gid}")
    async def transaction(gid: str, request: Request) -> Any:
        """One global transaction: its state, decision, and each branch with its attempts and timeline."""
        return await coordinator(request, "GET", f"/transactions/{quote(gid, safe='')}")

    @r.post("/transactions/{gid}/retry")
    async def retry_transaction(gid: str, request: Request) -> Any:
        """An operator's retry: a STUCK transaction resumes where it stopped, with fresh attempts."""
        return await coordinator(request, "POST", f"/transactions/{quote(gid, safe='')}/retry")

    @r.post("/transactions/{gid}/abort")
    async def force_stop_transaction(gid: str, request: Request) -> Any:
        """An operator's force-stop: a transaction still in phase 1 is decided abort (409 once decided)."""
        return await coordinator(request, "POST", f"/transactions/{quote(gid, safe='')}/abort")

    def replica(node: int) -> str:
        if not 1 <= node <= settings.coordinator_nodes:
            raise HTTPException(404, f"no coordinator replica {node}; they are 1 to {settings.coordinator_nodes}")
        return f"coordinator-{node}"

    @r.post("/coordinator/isolate/{node}")
    async def isolate(node: int, request: Request) -> dict[str, Any]:
        """Cut one coordinator replica off from the others (a Raft partition); undo with DELETE."""
        name = replica(node)
        await _fan_out(request, "DELETE", "/internal/isolate", [c for c in settings.coordinators if c != name])
        await _fan_out(request, "POST", "/internal/isolate", [name])
        return {"isolated": node}

    @r.delete("/coordinator/isolate")
    async def heal(request: Request) -> dict[str, Any]:
        await _fan_out(request, "DELETE", "/internal/isolate", settings.coordinators)
        return {"isolated": None}

    @r.post("/coordinator/kill/{node}")
    async def kill_replica(node: int) -> dict[str, Any]:
        """SIGKILL one coordinator replica through the supervisor, which keeps it down until a restart."""
        return kill_child(control.replica(settings, replica(node)), node)

    @r.post("/coordinator/restart/{node}")
    async def restart_replica(node: int) -> dict[str, Any]:
        """Let a killed replica start again (or restart a running one); the supervisor starts it."""
        return restart_child(control.replica(settings, replica(node)), node)

    def kv_node(node: int) -> control.Child:
        if not 1 <= node <= settings.kv_nodes:
            raise HTTPException(404, f"no KV node {node}; they are 1 to {settings.kv_nodes}")
        return control.kv_node(settings, node)

    @r.post("/kv/kill/{node}")
    async def kill_kv_node(node: int) -> dict[str, Any]:
        """SIGKILL one node of the Raft KV cluster; `txlab raft up` keeps it down until a restart."""
        return kill_child(kv_node(node), node)

    @r.post("/kv/restart/{node}")
    async def restart_kv_node(node: int) -> dict[str, Any]:
        """Let a killed KV node start again (or restart a running one); `txlab raft up` starts it."""
        return restart_child(kv_node(node), node)

    @r.get("/invariants")
    async def invariants(wait: float = 0.0) -> dict[str, Any]:
        if not 0 <= wait <= 120:
            raise HTTPException(422, "wait must be between 0 and 120 seconds")
        try:
            return (await asyncio.to_thread(run_checks, settings, wait)).to_dict()
        except CannotCheck as exc:
            raise HTTPException(503, f"cannot check: {exc}") from exc

    @r.get("/cache/ring")
    async def cache_ring(request: Request) -> dict[str, Any]:
        """The nodes, their points and share of the circle, and each service's hits and misses per node."""
        per_service = await _fan_out(request, "GET", "/internal/cache", SERVICES)
        return request.app.state.cache.ring_info() | {
            "stats": {svc: info["stats"] for svc, info in zip(SERVICES, per_service, strict=True)}}

    @r.post("/cache/nodes", status_code=201)
    async def cache_add(body: CacheNode, request: Request) -> dict[str, Any]:
        """Add a Redis node to the ring of every service, live; it joins empty."""
        cache: ShardedCache = request.app.state.cache
        if body.name in cache.nodes:
            raise HTTPException(409, f"cache node {body.name!r} is already on the ring")
        try:
            server = node_name(body.url)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        twin = next((name for name, url in cache.nodes.items() if node_name(url) == server), None)
        if twin is not None:  # one server as two members: the join would purge the live node's keys
            raise HTTPException(409, f"{body.url} is already on the ring as cache node {twin!r}")
        probe = aioredis.Redis.from_url(body.url, socket_timeout=3)
        try:
            await probe.ping()
        except (RedisError, OSError) as exc:
            raise HTTPException(422, f"cache node {body.url} does not answer PING: {exc}") from exc
        finally:
            await probe.aclose()
        before = len(cache.nodes)
        share = await cache.add_node(body.name, body.url)
        save_nodes(settings, cache.nodes)
        await _fan_out(request, "POST", "/internal/cache/nodes", SERVICES, json=body.model_dump())
        return {"moved_share": share, "ideal_share": 1 / (before + 1), "ring": cache.ring_info()}

    @r.delete("/cache/nodes/{name:path}")
    async def cache_remove(name: str, request: Request) -> dict[str, Any]:
        """Remove a node from the ring of every service, live; its keys move to the next nodes."""
        cache: ShardedCache = request.app.state.cache
        if name not in cache.nodes:
            raise HTTPException(404, f"no cache node {name!r}; see GET /cache/ring")
        if len(cache.nodes) == 1:
            raise HTTPException(422, "cannot remove the last cache node")
        before = len(cache.nodes)
        share = await cache.remove_node(name)
        save_nodes(settings, cache.nodes)
        await _fan_out(request, "DELETE", f"/internal/cache/nodes/{quote(name, safe='')}", SERVICES)
        return {"moved_share": share, "ideal_share": 1 / before, "ring": cache.ring_info()}

    @r.get("/telemetry")
    async def telemetry(request: Request, trace_id: str | None = Query(None, pattern=TRACE_ID),
                        order_id: str | None = None,
                        since: float = 0.0, limit: int = Query(500, ge=1, le=5000),
                        kinds: str = Query(ALL_KINDS, pattern=KINDS)) -> dict[str, Any]:
        """Every process's recent spans, log lines and fired faults, merged in time order (an order's or a
        trace's only, when asked; `kinds=faults` for what fired only): what the dashboard draws."""
        return await merged_telemetry(request, trace_id, order_id, since, limit, kinds)

    app.include_router(r)
    install(app, "admin")
    install_ui(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": "admin"}

    return app
