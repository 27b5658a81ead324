"""The dashboard's routes under /ui: six views, each a page whose live part is re-rendered once a second and
pushed over one server-sent event stream (`/ui/events?view=...`), the login form, and the operator's actions
(each a POST behind a confirmation, answered with a one-line message)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import escape
from sse_starlette import EventSourceResponse

from services.admin.control import is_held, kv_node, replica
from services.admin.ui import charts, data
from services.admin.ui.auth import COOKIE, ForeignOrigin, LoginRequired, require_login, session_value, token_matches
from services.admin.ui.live import live_of
from services.common.faults import POINTS
from services.common.settings import Settings
from services.common.tracing import untraced
from services.coordinator.model import ALL_STATES, PATTERNS

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
ORDER_PATTERNS = ("outbox", "halfmsg", *PATTERNS)
ORDER_STATUSES = ("PENDING", "PAID", "CANCELLED")
TICK_SECONDS = 1.0


def _clock(ts: float | datetime | None) -> str:
    if ts is None:
        return ""
    if isinstance(ts, datetime):
        ts = ts.timestamp()
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _cents(value: int | None) -> str:
    return "" if value is None else f"{value / 100:,.2f}"


templates.env.filters["clock"] = _clock
templates.env.filters["cents"] = _cents
templates.env.globals["color"] = charts.color


class BadInput(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(422, message)


async def form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last value of each)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1].strip() for k, v in fields.items()}


def _number(value: str | None, name: str, low: float, high: float) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadInput(f"{name} must be a number, not {value!r}") from None
    if not (low <= number <= high) or math.isnan(number):
        raise BadInput(f"{name} must be between {low:g} and {high:g}")
    return number


# ----------------------------------------------------------------------------- what each view shows
async def overview(request: Request, _: dict[str, str]) -> dict[str, Any]:
    live = live_of(request.app)
    samples = list(live.history)[-300:]
    fired = [f["ts"] for f in live.fired if f.get("ts")]
    return {"snapshot": live.snapshot, "invariants": live.invariants, "samples": len(samples),
            "money_chart": charts.totals_chart(samples, "money", live.initial.get("money"), "total money", "cents",
                                               fired),
            "stock_chart": charts.totals_chart(samples, "stock", live.initial.get("stock"), "total stock", "units",
                                               fired),
            "statuses": ORDER_STATUSES}


def transaction_filters(params: dict[str, str]) -> dict[str, Any]:
    pattern, status = params.get("pattern") or None, params.get("state") or None
    if pattern and pattern not in ORDER_PATTERNS:
        raise BadInput(f"no pattern {pattern!r}; choose one of {', '.join(ORDER_PATTERNS)}")
    if status and status not in ORDER_STATUSES and status not in ALL_STATES:
        raise BadInput(f"no state {status!r}; choose one of {', '.join(ORDER_STATUSES)} or a coordinator state")
    id_prefix = params.get("id") or None
    if id_prefix and not all(ch in "0123456789abcdef-" for ch in id_prefix.lower()):
        raise BadInput("id: give the start of an order id (hex digits and dashes)")
    since = _number(params.get("since"), "since (minutes)", 0, 100_000)
    stuck = _number(params.get("stuck_seconds"), "stuck longer than (s)", 0, 10_000_000) if params.get(
        "stuck") else None
    return {"pattern": pattern, "state": status, "id": id_prefix, "since": since, "stuck": stuck,
            "stuck_seconds": params.get("stuck_seconds") or "30", "stuck_on": bool(params.get("stuck"))}


async def transactions_view(request: Request, params: dict[str, str]) -> dict[str, Any]:
    f = transaction_filters(params)
    settings: Settings = request.app.state.settings
    coordinator_state = f["state"] if f["state"] in ALL_STATES else None
    order_status = f["state"] if f["state"] in ORDER_STATUSES else None
    stuck_gids = await data.global_states(request.app, "STUCK") if f["stuck_on"] else {}
    states = await data.global_states(request.app, coordinator_state)
    error = None
    try:
        rows = await asyncio.to_thread(data.transactions, settings, f["pattern"], order_status, f["id"], f["since"],
                                       f["stuck"])
        if stuck_gids:  # a STUCK global transaction is stuck however young its order
            extra = await asyncio.to_thread(data.transactions, settings, f["pattern"], None, f["id"], f["since"],
                                            None, 500)
            known = {r["id"] for r in rows}
            rows += [r for r in extra if r["id"] in stuck_gids and r["id"] not in known]
    except data.Unavailable as exc:
        rows, error = [], str(exc)
    if coordinator_state:
        rows = [r for r in rows if states.get(r["id"]) == coordinator_state]
    return {"rows": rows, "states": states, "filters": f, "error": error}


async def transaction_view(request: Request, params: dict[str, str]) -> dict[str, Any]:
    tid = params.get("id", "")
    if not tid or len(tid) > 100:
        raise BadInput("give a transaction id (an order id)")
    detail = await data.transaction_detail(request.app, tid)
    if detail is None:
        raise HTTPException(404, f"no order or transaction {tid!r} is known anywhere")
    return {"d": detail}


async def raft_view(request: Request, _: dict[str, str]) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    http: httpx.AsyncClient = request.app.state.http
    coordinator, kv = await asyncio.gather(
        data.raft_cluster(http, settings.coordinator_urls()),
        data.raft_cluster(http, settings.kv_urls()))
    held = {i for i, name in enumerate(settings.coordinators, start=1) if is_held(replica(settings, name))}
    kv_held = {i for i in range(1, settings.kv_nodes + 1) if is_held(kv_node(settings, i))}
    for name, cluster in (("coordinator", coordinator), ("kv", kv)):
        cluster["elections"] = remember_elections(request.app, name, cluster["elections"])
    return {"coordinator": coordinator, "kv": kv, "held": held, "kv_held": kv_held}


def remember_elections(app: FastAPI, cluster: str, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every election seen since admin started, newest last: a node keeps its own in memory, and one that was
    killed takes its history with it."""
    if getattr(app.state, "ui_elections", None) is None:
        app.state.ui_elections = {"coordinator": {}, "kv": {}}
    known: dict[tuple[int, int], dict[str, Any]] = app.state.ui_elections[cluster]
    for e in seen:
        known.setdefault((e["node"], e["term"]), e)
    for key in sorted(known, key=lambda k: known[k]["t"])[:-50]:
        del known[key]
    return sorted(known.values(), key=lambda e: e["t"])


async def cache_view(request: Request, _: dict[str, str]) -> dict[str, Any]:
    status, ring = await data.api_json(request.app, "GET", "/cache/ring")
    arcs = data.ring_arcs(request.app)
    nodes = [n["name"] for n in ring["nodes"]] if status == 200 else list(request.app.state.cache.nodes)
    return {"ring": ring if status == 200 else None, "error": None if status == 200 else ring,
            "stats": data.node_stats(ring["stats"]) if status == 200 else {},
            "svg": charts.ring_svg(arcs, nodes), "nodes": nodes,
            "last_change": getattr(request.app.state, "ui_ring_change", None)}


async def faults_view(request: Request, _: dict[str, str]) -> dict[str, Any]:
    status, armed = await data.api_json(request.app, "GET", "/faults")
    telemetry = await data.fetch_telemetry(request.app, limit=500, kinds="faults")
    fired = sorted((telemetry or {}).get("faults", []), key=lambda f: f.get("ts") or 0, reverse=True)
    return {"armed": armed if status == 200 else [], "error": None if status == 200 else armed,
            "points": list(POINTS.values()), "fired": fired[:200], "telemetry": telemetry is not None}


Builder = Callable[[Request, dict[str, str]], Awaitable[dict[str, Any]]]
VIEWS: dict[str, tuple[Builder, str]] = {  # view -> (its context, its page title)
    "overview": (overview, "Overview"),
    "transactions": (transactions_view, "Transactions"),
    "transaction": (transaction_view, "Transaction"),
    "raft": (raft_view, "Raft"),
    "cache": (cache_view, "Cache ring"),
    "faults": (faults_view, "Faults"),
}


def render(name: str, request: Request, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def page(request: Request, view: str, params: dict[str, str]) -> HTMLResponse:
    build, title = VIEWS[view]
    try:
        context = await build(request, params)
    except HTTPException as exc:
        return render("error.html", request, {"title": title, "view": view, "message": exc.detail},
                      status_code=exc.status_code)
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    return render(f"{view}.html", request, context | {"view": view, "title": title,
                                                      "stream": f"/ui/events?view={view}&{query}"})


# ----------------------------------------------------------------------------- the router
def ui_router() -> APIRouter:
    r = APIRouter(prefix="/ui", dependencies=[Depends(require_login)], include_in_schema=False)

    @r.get("")
    async def overview_page(request: Request) -> HTMLResponse:
        return await page(request, "overview", {})

    @r.get("/transactions")
    async def transactions_page(request: Request) -> HTMLResponse:
        return await page(request, "transactions", dict(request.query_params))

    @r.get("/tx/{tid}")
    async def transaction_page(tid: str, request: Request) -> HTMLResponse:
        return await page(request, "transaction", {"id": tid})

    @r.get("/raft")
    async def raft_page(request: Request) -> HTMLResponse:
        return await page(request, "raft", {})

    @r.get("/cache")
    async def cache_page(request: Request) -> HTMLResponse:
        return await page(request, "cache", {})

    @r.get("/faults")
    async def faults_page(request: Request) -> HTMLResponse:
        return await page(request, "faults", {})

    @r.get("/events")
    async def events(request: Request, view: str) -> EventSourceResponse:
        """The live part of `view`, re-rendered once a second, as the SSE event named after the view."""
        if view not in VIEWS:
            raise BadInput(f"no view {view!r}; choose one of {', '.join(VIEWS)}")
        params = {k: v for k, v in request.query_params.items() if k != "view"}
        build = VIEWS[view][0]
        await build(request, params)  # bad filters are refused before the stream starts
        fragment = templates.get_template(f"_{view}.html")

        async def stream() -> AsyncIterator[dict[str, str]]:
            live = live_of(request.app)
            async with live.watching():  # every dashboard page keeps the totals sampled
                while True:
                    if view == "overview":
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(live.updated.wait(), 5.0)
                    try:
                        with untraced():  # a poll, as the sampler's
                            html = fragment.render(await build(request, params) | {"request": request})
                    except HTTPException as exc:
                        html = f'<p class="error">{escape(str(exc.detail))}</p>'
                    yield {"event": view, "data": html}
                    if view != "overview":
                        await asyncio.sleep(TICK_SECONDS)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------------- actions
    async def act(request: Request, method: str, path: str, done: Callable[[Any], str], **kwargs: Any) -> Response:
        status, body = await data.api_json(request.app, method, path, **kwargs)
        if status >= 400:
            return flash(request, f"{method} {path}: {body}", ok=False, status_code=status)
        return flash(request, done(body))

    @r.post("/tx/{tid}/retry")
    async def retry(tid: str, request: Request) -> Response:
        return await act(request, "POST", f"/transactions/{quote(tid, safe='')}/retry",
                         lambda b: f"retrying {tid}: it is {b['state']}")

    @r.post("/tx/{tid}/force-stop")
    async def force_stop(tid: str, request: Request) -> Response:
        return await act(request, "POST", f"/transactions/{quote(tid, safe='')}/abort",
                         lambda b: f"{tid} force-stopped: it is {b['state']}")

    @r.post("/halfmsg/{message_id}/{action}")
    async def resolve(message_id: str, action: str, request: Request) -> Response:
        if action not in ("recheck", "commit", "rollback"):
            return refuse(request, f"no action {action!r}; choose recheck, commit or rollback")
        return await act(request, "POST", f"/halfmsg/messages/{quote(message_id, safe='')}/{action}",
                         lambda b: f"half message {message_id}: {b.get('state', action)}")

    @r.post("/outbox/{service}/resend")
    async def resend(service: str, request: Request, id: uuid.UUID | None = None) -> Response:
        return await act(request, "POST", f"/outbox/{quote(service, safe='')}/resend",
                         lambda b: f"re-sent {b} outbox rows of {service}", params={"id": str(id)} if id else {})

    @r.post("/coordinator/{node}/{action}")
    async def coordinator_action(node: int, action: str, request: Request) -> Response:
        paths = {"kill": f"/coordinator/kill/{node}", "restart": f"/coordinator/restart/{node}",
                 "isolate": f"/coordinator/isolate/{node}"}
        if action not in paths:
            return refuse(request, f"no action {action!r}; choose kill, restart or isolate")
        done = {"kill": lambda b: f"coordinator-{node} killed (pid {b['pid']}); it stays down until restarted",
                "restart": lambda b: f"coordinator-{node} {b['done']}: the supervisor starts it",
                "isolate": lambda _: f"coordinator-{node} isolated from the other replicas"}
        return await act(request, "POST", paths[action], done[action])

    @r.post("/coordinator/heal")
    async def coordinator_heal(request: Request) -> Response:
        return await act(request, "DELETE", "/coordinator/isolate", lambda _: "coordinator partition healed")

    @r.post("/kv/{node}/{action}")
    async def kv_action(node: int, action: str, request: Request) -> Response:
        settings: Settings = request.app.state.settings
        if action not in ("kill", "restart", "isolate"):
            return refuse(request, f"no action {action!r}; choose kill, restart or isolate")
        if action == "kill":
            return await act(request, "POST", f"/kv/kill/{node}",
                             lambda b: f"KV node {node} killed (pid {b['pid']}); it stays down until restarted")
        if action == "restart":
            return await act(request, "POST", f"/kv/restart/{node}",
                             lambda b: f"KV node {node} {b['done']}: `txlab raft up` starts it")
        if not 1 <= node <= settings.kv_nodes:
            return refuse(request, f"no KV node {node}; they are 1 to {settings.kv_nodes}")
        others = [i for i in range(1, settings.kv_nodes + 1) if i != node]
        return await kv_admin(request, node, "POST", {"block": others}, f"KV node {node} isolated from {others}")

    @r.post("/kv/heal")
    async def kv_heal(request: Request) -> Response:
        nodes = request.app.state.settings.kv_nodes
        answers = [await kv_admin(request, i, "DELETE", None, "") for i in range(1, nodes + 1)]
        failed = [a for a in answers if a.status_code >= 400]
        return failed[0] if len(failed) == len(answers) else flash(request, "KV partitions healed")

    async def kv_admin(request: Request, node: int, method: str, body: Any, done: str) -> Response:
        settings: Settings = request.app.state.settings
        url = f"{settings.kv_urls()[node - 1]}/raft/partition"
        try:
            answer = await request.app.state.http.request(
                method, url, json=body, headers={"authorization": f"Bearer {settings.admin_token}"}, timeout=5.0)
        except httpx.HTTPError as exc:
            return flash(request, f"KV node {node} does not answer ({exc.__class__.__name__}): is "
                                  "`txlab raft up` running?", ok=False, status_code=503)
        if answer.status_code >= 400:
            return flash(request, f"KV node {node} answered {answer.status_code}: {answer.text[:200]}", ok=False,
                         status_code=502)
        return flash(request, done)

    @r.post("/cache/nodes")
    async def cache_add(request: Request) -> Response:
        fields = await form(request)
        if not fields.get("name") or not fields.get("url"):
            return refuse(request, "give the new node's name and its redis:// URL")
        return await ring_change(request, "POST", "/cache/nodes", f"add {fields['name']}",
                                 f"added {fields['name']}", json={"name": fields["name"], "url": fields["url"]})

    @r.post("/cache/nodes/remove")
    async def cache_remove(request: Request) -> Response:
        name = (await form(request)).get("name")
        if not name:
            return refuse(request, "give the name of the node to remove")
        return await ring_change(request, "DELETE", f"/cache/nodes/{quote(name, safe='')}", f"remove {name}",
                                 f"removed {name}")

    async def ring_change(request: Request, method: str, path: str, doing: str, done: str,
                          **kwargs: Any) -> Response:
        """Add or remove a node through the admin API; remember the change (the view shows the keys it moved)."""
        status, body = await data.api_json(request.app, method, path, **kwargs)
        if status >= 400:
            return flash(request, f"cannot {doing}: {body}", ok=False, status_code=status)
        request.app.state.ui_ring_change = {"what": done, "at": time.time()} | body
        return flash(request, f"{done}: {body['moved_share']:.1%} of the keys moved (ideal {body['ideal_share']:.1%})")

    @r.post("/faults")
    async def arm(request: Request) -> Response:
        fields = await form(request)
        point, action = fields.get("point", ""), fields.get("action", "")
        if point not in POINTS:
            return refuse(request, f"no fault point {point!r}")
        body: dict[str, Any] = {"point": point, "action": action}
        try:
            if action == "delay":
                body["delay_ms"] = int(_number(fields.get("delay_ms"), "delay (ms)", 0, 60_000) or 0)
            if (times := _number(fields.get("times"), "times", 1, 1_000_000)) is not None:
                body["times"] = int(times)
            if (probability := _number(fields.get("probability"), "probability", 0.0001, 1)) is not None:
                body["probability"] = probability
        except BadInput as exc:
            return refuse(request, exc.detail)
        if fields.get("service"):
            body["service"] = fields["service"]
        return await act(request, "POST", "/faults", lambda b: f"armed {point} {action} in "
                                                                 f"{', '.join(a['service'] for a in b)}", json=body)

    @r.post("/faults/clear")
    async def clear(request: Request) -> Response:
        point = (await form(request)).get("point") or None
        return await act(request, "DELETE", "/faults", lambda b: f"disarmed {b['disarmed']}",
                         params={"point": point} if point else {})

    return r


def flash(request: Request, message: str, ok: bool = True, status_code: int = 200) -> HTMLResponse:
    return render("_flash.html", request, {"message": message, "ok": ok}, status_code=status_code)


def refuse(request: Request, message: str) -> HTMLResponse:
    return flash(request, message, ok=False, status_code=422)


def login_routes() -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)

    @r.get("/login")
    async def login_form(request: Request, next: str = "/ui") -> HTMLResponse:
        return render("login.html", request, {"next": _safe_next(next), "error": None, "title": "Log in"})

    @r.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        settings: Settings = request.app.state.settings
        target = _safe_next(fields.get("next", "/ui"))
        if not token_matches(settings, fields.get("token", "")):
            return render("login.html", request, {"next": target, "title": "Log in",
                                                  "error": "That is not the admin token (see TXLAB_ADMIN_TOKEN, or "
                                                           "the file admin-token in the data dir)."},
                          status_code=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session_value(settings), httponly=True, samesite="strict", path="/ui",
                            secure=request.url.scheme == "https")
        return response

    @r.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    return r


def _safe_next(target: str) -> str:
    """Only a path of the dashboard: a login must not send the browser elsewhere."""
    return target if target.startswith("/ui") and not target.startswith("/ui/login") and "//" not in target \
        else "/ui"


class NoFraming:
    """The dashboard's pages are never shown inside another page's frame (clickjacking its buttons)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-frame-options", b"DENY"),
                                      (b"content-security-policy", b"frame-ancestors 'none'")]
            await send(message)

        await self.app(scope, receive, sending)


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard under /ui on the admin app."""
    app.include_router(login_routes())
    app.include_router(ui_router())
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.exception_handler(ForeignOrigin)
    async def foreign_origin(request: Request, _: ForeignOrigin) -> Response:
        return Response("refused: this action came from a page of another origin (the dashboard's actions are "
                        "sent by the dashboard itself)", status_code=403, media_type="text/plain")

    app.add_middleware(NoFraming)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _: LoginRequired) -> Response:
        wants_page = (request.method == "GET" and "text/html" in request.headers.get("accept", "")
                      and "hx-request" not in request.headers)
        if wants_page:
            return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)
        return Response("log in first: the admin token (Authorization: Bearer ...) or the session cookie of "
                        "/ui/login", status_code=401, media_type="text/plain",
                        headers={"WWW-Authenticate": "Bearer"})

