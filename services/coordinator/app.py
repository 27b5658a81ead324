"""One coordinator replica: its store (a Raft node by default), the driver that runs while it leads, and its API.

Routes (all but `/raft/status`, `/health` and `/alive` need the admin token):
- `POST /transactions` `{"gid", "pattern", "branches": [{"branch": "inventory", ...work}, ...], "deadline_ms"}`
  begins a transaction (201), or answers the one begun with that gid (200); `deadline_ms` is a Unix time in ms.
- `GET /transactions?state=&pattern=&limit=&offset=` (newest first), `GET /transactions/{gid}` (its branches
  and timeline), `POST /transactions/{gid}/retry` (an operator's retry, e.g. of a STUCK one).
- `POST /transactions/{gid}/abort`: an operator's force-stop of a transaction in phase 1.
- `GET /raft/status`, `GET /raft/events`; `POST|DELETE /internal/isolate` (a partition of this replica),
  `POST /internal/reset` (forget every transaction: `txlab seed`), `/internal/faults`.

Only the leader answers `/transactions`: a follower answers 307 with the leader's URL in `Location`, or 503
`{"leader": null}` while there is no leader.
"""

# (no postponed annotations: FastAPI reads the local `Leader` dependency from the route signatures)

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import aiohttp
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from services.common.auth import require_token
from services.common.faults import FaultInjector
from services.common.settings import Settings, get_settings
from services.common.tracing import current_traceparent
from services.coordinator.driver import MAX_DEADLINE_SECONDS, Driver
from services.coordinator.model import ALL_STATES, BRANCHES, PATTERNS
from services.coordinator.store import NotLeader, OutcomeUnknown, Store, open_store
from services.runtime.http_errors import install_error_handlers
from services.runtime.internal_routes import fault_routes
from services.runtime.telemetry import TELEMETRY, Metric, gauge, install

GID = r"^[A-Za-z0-9._:-]+$"
FORCE_STOPPED = "force-stopped by an operator"


class BranchIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # the work the participant's phase-1 route takes

    branch: str = Field(pattern=f"^({'|'.join(BRANCHES)})$")

    @model_validator(mode="after")
    def no_gid_inside(self) -> "BranchIn":
        if "gid" in (self.model_extra or {}):
            raise ValueError("a branch's work may not carry its own gid: the transaction's is used")
        return self


class Begin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gid: str = Field(min_length=1, max_length=128, pattern=GID)
    pattern: str = Field(pattern=f"^({'|'.join(PATTERNS)})$")
    branches: list[BranchIn] = Field(min_length=1, max_length=len(BRANCHES))
    deadline_ms: StrictInt = Field(gt=0, lt=2**53)


class Redirect(Exception):
    def __init__(self, leader: str | None) -> None:
        self.leader = leader


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its bodies and timelines: what a listing shows."""
    return {k: v for k, v in record.items() if k not in ("branches", "timeline")} | {
        "branches": {n: {k: b[k] for k in ("state", "outcome", "attempts", "last_error")}
                     for n, b in record["branches"].items()}}


def create_app(node_id: int, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    process = f"coordinator-{node_id}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings, node_id)
        faults = FaultInjector(process, settings.data_dir / "faults")
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        await store.start()
        driver = Driver(store, settings, faults, http)
        app.state.store, app.state.faults, app.state.driver = store, faults, driver
        task = asyncio.create_task(driver.run(), name="driver")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
            await http.close()

    app = FastAPI(title=f"txlab coordinator {node_id}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry=TELEMETRY)
    app.state.settings = settings
    install_error_handlers(app)

    @app.exception_handler(Redirect)
    async def redirect(request: Request, exc: Redirect) -> JSONResponse:
        if exc.leader is None:
            return JSONResponse({"detail": "no leader now (an election is running); retry shortly",
                                 "leader": None}, status_code=503)
        # percent-encoded again: a header holds only latin-1, and a gid may be any text
        location = exc.leader + quote(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        return JSONResponse({"leader": exc.leader, "location": location}, status_code=307,
                            headers={"location": location})

    @app.exception_handler(OutcomeUnknown)
    async def unknown(_: Request, exc: OutcomeUnknown) -> JSONResponse:
        return JSONResponse({"detail": f"the outcome is not known yet ({exc}); retry: every change is "
                                       "idempotent", "outcome": "unknown"}, status_code=503)

    def store_of(request: Request) -> Store:
        return request.app.state.store

    async def leader(request: Request) -> Store:
        """The store, on the leader only, caught up with everything committed before this request."""
        store = store_of(request)
        try:
            await store.catch_up()
        except NotLeader as exc:
            raise Redirect(exc.leader) from None
        return store

    async def propose(store: Store, cmd: dict[str, Any]) -> str:
        try:
            outcome = await store.propose(cmd)
        except NotLeader as exc:
            raise Redirect(exc.leader) from None
        if outcome.startswith("malformed"):
            raise HTTPException(422, outcome)
        return outcome

    def found(store: Store, gid: str) -> dict[str, Any]:
        record = store.book.get(gid)
        if record is None:
            raise HTTPException(404, f"no transaction {gid!r}")
        return record

    Leader = Annotated[Store, Depends(leader)]
    r = APIRouter(dependencies=[Depends(require_token)])

    @r.post("/transactions", status_code=201)
    async def begin(body: Begin, store: Leader, request: Request) -> Any:
        names = [b.branch for b in body.branches]
        if len(set(names)) != len(names):
            raise HTTPException(422, f"a branch appears twice: {', '.join(names)}")
        if body.deadline_ms / 1000 > time.time() + MAX_DEADLINE_SECONDS:
            raise HTTPException(422, f"deadline_ms is more than {MAX_DEADLINE_SECONDS:.0f} s ahead")
        bodies = {b.branch: b.model_dump(exclude={"branch"}) for b in body.branches}
        known = store.book.get(body.gid)  # a begin repeated (the order service's recovery): no log entry
        if known is None and await propose(store, {
                "op": "begin", "gid": body.gid, "pattern": body.pattern, "branches": bodies,
                "deadline": body.deadline_ms / 1000, "now": time.time(),
                "traceparent": current_traceparent()}) == "created":
            request.app.state.driver.wake.set()
            return found(store, body.gid)
        record = found(store, body.gid)  # begun before, maybe by a concurrent twin of this request
        if record["pattern"] != body.pattern or set(record["branches"]) != set(bodies):
            raise HTTPException(409, f"transaction {body.gid} exists with pattern {record['pattern']} and "
                                     f"branches {', '.join(record['branches'])}")
        return JSONResponse(record, status_code=200)

    @r.get("/transactions")
    async def listing(store: Leader, state: str | None = None, pattern: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        if state is not None and state not in ALL_STATES:
            raise HTTPException(422, f"state must be one of {', '.join(sorted(ALL_STATES))}")
        if pattern is not None and pattern not in PATTERNS:
            raise HTTPException(422, f"pattern must be one of {', '.join(PATTERNS)}")
        selected = list(store.book.select(state, pattern))
        return {"total": len(selected), "offset": offset, "limit": limit, "counts": store.book.counts(),
                "items": [summary(x) for x in selected[offset: offset + limit]]}

    @r.get("/transactions/{gid}")
    async def one(gid: str, store: Leader) -> dict[str, Any]:
        return found(store, gid)

    @r.post("/transactions/{gid}/retry")
    async def retry(gid: str, store: Leader, request: Request) -> dict[str, Any]:
        record = found(store, gid)
        if await propose(store, {"op": "retry", "gid": gid, "now": time.time()}) == "ignored":
            raise HTTPException(409, f"transaction {gid} is {record['state']}: final, nothing to retry")
        request.app.state.driver.wake.set()
        return found(store, gid)

    @r.post("/transactions/{gid}/abort")
    async def force_stop(gid: str, store: Leader, request: Request) -> dict[str, Any]:
        """An operator's force-stop: a transaction still in phase 1 is decided abort now (its branches are
        then cancelled or rolled back as after any abort); one already decided is left alone (409)."""
        record = found(store, gid)
        if record["decision"] == "abort" and record["reason"] == FORCE_STOPPED:
            return record  # a repeated force-stop (the client retries when the first answer was lost)
        if record["pattern"] == "3pc" and record.get("round", 0) > 0 and record["decision"] is None:
            raise HTTPException(409, f"transaction {gid} is past 3PC's can-commit round: a participant that "
                                "pre-committed commits on its own once its timeout passes, so an abort now could "
                                "split the outcome (3PC's own weakness); it is left to finish")
        cmd = {"op": "decide", "gid": gid, "decision": "abort", "reason": FORCE_STOPPED, "now": time.time()}
        if record["decision"] is not None or await propose(store, cmd) == "ignored":
            where = f"decided {record['decision']}" if record["decision"] else "not in phase 1"
            raise HTTPException(409, f"transaction {gid} is {record['state']} ({where}): only a transaction still "
                                "in phase 1 can be force-stopped")
        request.app.state.driver.interrupt(gid)
        request.app.state.driver.wake.set()
        return found(store, gid)

    internal = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)
    fault_routes(internal, process, lambda request: request.app.state.faults)

    @internal.post("/isolate")
    async def isolate(request: Request) -> dict[str, Any]:
        store_of(request).isolate(True)
        return {"isolated": node_id}

    @internal.delete("/isolate")
    async def heal(request: Request) -> dict[str, Any]:
        store_of(request).isolate(False)
        return {"isolated": None}

    @internal.post("/reset")
    async def reset(store: Leader) -> dict[str, str]:
        await propose(store, {"op": "reset"})
        return {"reset": "every transaction forgotten"}

    @app.get("/raft/status")
    async def status(request: Request) -> dict[str, Any]:
        driver: Driver = request.app.state.driver
        return store_of(request).status() | {"driving": len(driver.tasks), "leading_since": driver.leading_since}

    @app.get("/raft/events")
    async def events(request: Request, since: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        return {"events": [e for e in store_of(request).events if e["seq"] > since]}

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        store = store_of(request)
        return {"status": "ok", "service": process, "leader": store.leader_url(), "leading": store.leading is not None}

    async def metrics() -> list[Metric]:
        store: Store = app.state.store
        st = store.status()
        node = (str(node_id),)
        states = Counter((rec["pattern"], rec["state"]) for rec in store.book.records.values())
        return [gauge("raft_term", "the replica's current term", ["node"], [(node, st["term"])]),
                gauge("raft_commit_index", "the highest log index known committed", ["node"], [(node, st["commit"])]),
                gauge("raft_applied_index", "the highest log index applied to the records", ["node"],
                      [(node, st["applied"])]),
                gauge("raft_leader", "1 on the leader", ["node"], [(node, float(store.leading is not None))]),
                gauge("transactions", "global transactions by pattern and state, as this replica knows them",
                      ["node", "pattern", "state"], [((str(node_id), p, s), n) for (p, s), n in states.items()]),
                gauge("transactions_driving", "transactions the leader is driving now", ["node"],
                      [(node, len(app.state.driver.tasks))])]

    install(app, process, metrics)
    app.include_router(r)
    app.include_router(internal)
    return app
