"""What the dashboard shows, read where it lives: the services' databases (read-only), the admin API itself
(called in-process), the Raft nodes' status routes, and the processes' telemetry as admin aggregates it."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import psycopg
from fastapi import FastAPI
from psycopg.rows import dict_row

from services.common.settings import SERVICES, Settings
from services.common.tracing import TracedTransport
from services.messaging.parking import queue_depths
from services.messaging.topology import topology_of

PARTICIPANTS = ("inventory", "payment")


class Unavailable(RuntimeError):
    """A database or a process the view reads from does not answer."""


def read(settings: Settings, service: str, *statements: tuple[str, tuple[Any, ...]]) -> list[list[dict[str, Any]]]:
    """The rows of each (sql, params), read from one snapshot of the service's database."""
    try:
        with psycopg.connect(settings.raw_dsn(service), connect_timeout=3, row_factory=dict_row) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                return [conn.execute(sql, params).fetchall() for sql, params in statements]  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise Unavailable(f"{settings.database(service)}: {str(exc).strip()}") from exc


async def aread(settings: Settings, service: str, *statements: tuple[str, tuple[Any, ...]]) -> list[list[dict]]:
    return await asyncio.to_thread(read, settings, service, *statements)


def api(app: FastAPI) -> httpx.AsyncClient:
    """A client of this admin API, served in-process (no socket), with the admin token."""
    client = getattr(app.state, "ui_api", None)
    if client is None:
        settings: Settings = app.state.settings
        # an error of the API is its answer (a 500), never an exception thrown into the page or the stream
        transport = TracedTransport(httpx.ASGITransport(app=app, raise_app_exceptions=False))
        client = httpx.AsyncClient(transport=transport, base_url="http://admin", timeout=15.0,
                                   headers={"authorization": f"Bearer {settings.admin_token}"})
        app.state.ui_api = client
    return client


async def api_json(app: FastAPI, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body) of an admin API call; the body of an error is its `detail`."""
    response = await api(app).request(method, path, **kwargs)
    try:
        body = response.json()
    except ValueError:
        body = response.text[:300]
    if response.status_code >= 400 and isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    return response.status_code, body


# ----------------------------------------------------------------------------- telemetry (admin's aggregate)
async def fetch_telemetry(app: FastAPI, trace_id: str | None = None, order_id: str | None = None,
                          limit: int = 500, **only: Any) -> dict[str, list[dict[str, Any]]] | None:
    """Spans, logs and fired faults from admin's `GET /telemetry` (each process's recent ring, merged), or
    None when admin does not aggregate telemetry (yet) or it does not answer. The one place that reads it."""
    params: dict[str, Any] = {"limit": limit} | only  # e.g. kinds="faults", since=...
    if trace_id:
        params["trace_id"] = trace_id
    if order_id:
        params["order_id"] = order_id
    try:
        status, body = await api_json(app, "GET", "/telemetry", params=params)
    except httpx.HTTPError:
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    return {key: list(body.get(key) or []) for key in ("spans", "logs", "faults")}


# ----------------------------------------------------------------------------- overview
def totals(settings: Settings) -> dict[str, int]:
    """Total money (balances + frozen + captured payments) and total stock (available + reserved + sold), each
    with what it was seeded as: under every fault the two must stay constant (Jepsen's bank test)."""
    money, captured = read(settings, "payment",
                           ("SELECT coalesce(sum(balance_cents + frozen_cents), 0) AS held, "
                            "coalesce(sum(initial_cents), 0) AS initial FROM customers", ()),
                           ("SELECT coalesce(sum(amount_cents), 0) AS captured FROM payments "
                            "WHERE status = 'CAPTURED'", ()))
    (stock,) = read(settings, "inventory", ("SELECT coalesce(sum(available + reserved + sold), 0) AS units, "
                                            "coalesce(sum(initial), 0) AS initial FROM products", ()))
    return {"money": int(money[0]["held"] + captured[0]["captured"]), "money_initial": int(money[0]["initial"]),
            "stock": int(stock[0]["units"]), "stock_initial": int(stock[0]["initial"])}


def orders_by_pattern(settings: Settings) -> dict[str, dict[str, int]]:
    (rows,) = read(settings, "order", ("SELECT pattern, status, count(*) AS n FROM orders GROUP BY 1, 2", ()))
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        table[r["pattern"]][r["status"]] = r["n"]
    return dict(sorted(table.items()))


def database_backlogs(settings: Settings) -> dict[str, int]:
    """Outbox rows due (and FAILED) per service, half messages HALF, COMMITTED and PARKED, and our prepared
    transactions."""
    counts: dict[str, int] = {}
    for service in SERVICES:
        outbox, prepared = read(settings, service, (
            "SELECT count(*) FILTER (WHERE status = 'PENDING' AND next_attempt_at <= now()) AS due, "
            "count(*) FILTER (WHERE status = 'FAILED') AS failed FROM outbox", ()), (
            "SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database() "
            "AND gid LIKE 'txlab:%%'", ()))
        counts[f"{service} outbox due"] = outbox[0]["due"]
        counts[f"{service} outbox failed"] = outbox[0]["failed"]
        counts[f"{service} prepared"] = prepared[0]["n"]
    (half,) = read(settings, "broker", ("SELECT state, count(*) AS n FROM half_messages "
                                        "WHERE state IN ('HALF', 'COMMITTED', 'PARKED') GROUP BY state", ()))
    for state in ("HALF", "COMMITTED", "PARKED"):
        counts[f"half messages {state}"] = next((r["n"] for r in half if r["state"] == state), 0)
    return counts


async def queue_backlogs(settings: Settings) -> dict[str, int]:
    """Messages ready in each service's queue and parking queue (RabbitMQ's passive declare)."""
    try:
        depths = await asyncio.wait_for(queue_depths(settings.amqp, topology_of(settings)), 5.0)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise Unavailable(f"RabbitMQ: {exc!r}") from exc
    return {k.replace("_queued", " queue").replace("_parked", " parked"): v
            for k, v in depths.items() if not k.endswith("_consumers")}


async def transaction_counts(app: FastAPI) -> dict[str, int] | None:
    """The coordinator's transactions per state; None when no replica answers."""
    try:
        status, body = await api_json(app, "GET", "/transactions", params={"limit": 1})
    except httpx.HTTPError:
        return None
    return body.get("counts", {}) if status == 200 and isinstance(body, dict) else None


# ----------------------------------------------------------------------------- transactions
def transactions(settings: Settings, pattern: str | None, status: str | None, id_prefix: str | None,
                 since_minutes: float | None, stuck_seconds: float | None, limit: int = 100) -> list[dict]:
    """Orders newest first, filtered; `stuck_seconds`: only those PENDING longer than that."""
    where, params = ["true"], []
    if pattern:
        where.append("pattern = %s")
        params.append(pattern)
    if status:
        where.append("status = %s")
        params.append(status)
    if id_prefix:
        where.append("id::text LIKE %s")
        params.append(id_prefix.lower().replace("%", "").replace("_", "") + "%")
    if since_minutes is not None:
        where.append("created_at >= now() - make_interval(secs => %s)")
        params.append(since_minutes * 60)
    if stuck_seconds is not None:
        where.append("status = 'PENDING' AND created_at < now() - make_interval(secs => %s)")
        params.append(stuck_seconds)
    (rows,) = read(settings, "order", (
        "SELECT id::text AS id, pattern, status, reason, total_cents, created_at, decided_at, "
        "extract(epoch FROM coalesce(decided_at, now()) - created_at) AS age FROM orders "
        f"WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT {int(limit)}", tuple(params)))
    return rows


async def global_states(app: FastAPI, state: str | None = None) -> dict[str, str]:
    """gid -> state of the coordinator's newest transactions (or those in `state`); empty when it is down."""
    params = {"limit": 500} | ({"state": state} if state else {})
    try:
        status, body = await api_json(app, "GET", "/transactions", params=params)
    except httpx.HTTPError:
        return {}
    if status != 200 or not isinstance(body, dict):
        return {}
    return {item["gid"]: item["state"] for item in body.get("items", [])}


# ----------------------------------------------------------------------------- one transaction
def _ts(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else float(value) if value is not None else None


def _order_rows(settings: Settings, oid: str) -> dict[str, Any]:
    order, items, outbox, barrier = read(
        settings, "order",
        ("SELECT id::text AS id, customer_id, pattern, status, reason, total_cents, stock_status, payment_status, "
         "created_at, decided_at FROM orders WHERE id = %s", (oid,)),
        ("SELECT sku, qty, unit_price_cents FROM order_items WHERE order_id = %s ORDER BY sku", (oid,)),
        ("SELECT id::text AS id, routing_key, status, attempts, last_error, envelope->>'traceparent' AS traceparent, "
         "created_at, sent_at FROM outbox WHERE order_id = %s ORDER BY created_at", (oid,)),
        ("SELECT outcome, at FROM halfmsg_barrier WHERE order_id = %s", (oid,)))
    return {"order": order[0] if order else None, "items": items, "outbox": {"order": outbox},
            "halfmsg_barrier": barrier[0] if barrier else None}


def _participant_rows(settings: Settings, service: str, oid: str) -> dict[str, Any]:
    effect = ("SELECT sku, qty, status, updated_at FROM reservations WHERE order_id = %s ORDER BY sku"
              if service == "inventory" else
              "SELECT amount_cents, status, reason, coalesce(refunded_at, created_at) AS updated_at FROM payments "
              "WHERE order_id = %s")
    outbox, barrier, prepared, effects = read(
        settings, service,
        ("SELECT id::text AS id, routing_key, status, attempts, last_error, envelope->>'traceparent' AS traceparent, "
         "created_at, sent_at FROM outbox WHERE order_id = %s ORDER BY created_at", (oid,)),
        ("SELECT branch, op, outcome, held, detail, at FROM tcc_barrier WHERE gid = %s ORDER BY at", (oid,)),
        ("SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE %s",
         (f"txlab:{oid}:%",)),
        (effect, (oid,)))
    return {"outbox": outbox, "barrier": barrier, "prepared": prepared, "effects": effects}


def _half_messages(settings: Settings, oid: str) -> list[dict[str, Any]]:
    messages, history = read(
        settings, "broker",
        ("SELECT id::text AS id, topic, state, checks, delivery_attempts, last_error, created_at, updated_at "
         "FROM half_messages WHERE body->>'order_id' = %s ORDER BY created_at", (oid,)),
        ("SELECT h.message_id::text AS message_id, h.at, h.kind, h.detail FROM half_message_history h "
         "JOIN half_messages m ON m.id = h.message_id WHERE m.body->>'order_id' = %s ORDER BY h.seq", (oid,)))
    for m in messages:
        m["history"] = [h for h in history if h["message_id"] == m["id"]]
    return messages


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a W3C `traceparent` (version-traceid-spanid-flags)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


async def transaction_detail(app: FastAPI, oid: str) -> dict[str, Any] | None:
    """Everything known about one order or global transaction, and its life merged into one timeline; None
    when nothing anywhere knows the id."""
    settings: Settings = app.state.settings
    is_uuid = _is_uuid(oid)
    detail: dict[str, Any] = {"id": oid, "order": None, "items": [], "outbox": {}, "halfmsg_barrier": None,
                              "participants": {}, "half_messages": [], "global": None, "unavailable": []}
    if is_uuid:
        try:
            detail |= await asyncio.to_thread(_order_rows, settings, oid)
        except Unavailable as exc:
            detail["unavailable"].append(str(exc))
        for service in PARTICIPANTS:
            try:
                part = await asyncio.to_thread(_participant_rows, settings, service, oid)
            except Unavailable as exc:
                detail["unavailable"].append(str(exc))
                continue
            detail["outbox"][service] = part.pop("outbox")
            detail["participants"][service] = part
        try:
            detail["half_messages"] = await asyncio.to_thread(_half_messages, settings, oid)
        except Unavailable as exc:
            detail["unavailable"].append(str(exc))
    status, body = await api_json(app, "GET", f"/transactions/{quote(oid, safe='')}")
    if status == 200:
        detail["global"] = body
    elif status != 404:
        detail["unavailable"].append(f"the coordinator: {body}")
    known = (detail["order"] or detail["global"] or detail["half_messages"]
             or any(p["barrier"] or p["effects"] for p in detail["participants"].values()))
    if not known:
        return None
    traceparents = [r["traceparent"] for rows in detail["outbox"].values() for r in rows if r["traceparent"]]
    detail["trace_id"] = next((t for t in map(trace_id_of, traceparents) if t), None)
    telemetry = await fetch_telemetry(app, trace_id=detail["trace_id"], order_id=None if detail["trace_id"] else oid)
    detail["telemetry"] = telemetry
    detail["spans"] = waterfall(telemetry["spans"]) if telemetry else []
    detail["logs"] = sorted(telemetry["logs"], key=lambda log: log.get("ts") or 0) if telemetry else []
    detail["timeline"] = timeline(detail)
    return detail


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def timeline(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The transaction's life, every process's part of it, in time order: (ts, where, what)."""
    events: list[tuple[float | None, str, str]] = []
    if order := d["order"]:
        events.append((_ts(order["created_at"]), "order", f"order placed ({order['pattern']}), "
                                                            f"total {order['total_cents'] / 100:.2f}"))
        if order["decided_at"]:
            reason = f": {order['reason']}" if order["reason"] else ""
            events.append((_ts(order["decided_at"]), "order", f"order {order['status']}{reason}"))
    if barrier := d["halfmsg_barrier"]:
        events.append((_ts(barrier["at"]), "order", f"half-message barrier: local transaction {barrier['outcome']}"))
    for service, rows in d["outbox"].items():
        for r in rows:
            events.append((_ts(r["created_at"]), service, f"outbox row {r['routing_key']} written"))
            if r["sent_at"]:
                events.append((_ts(r["sent_at"]), service, f"outbox row {r['routing_key']} published "
                                                           f"(attempt {max(r['attempts'], 1)})"))
            elif r["status"] != "SENT":
                events.append((None, service, f"outbox row {r['routing_key']} {r['status']}"
                                              + (f": {r['last_error']}" if r["last_error"] else "")))
    for m in d["half_messages"]:
        events.append((_ts(m["created_at"]), "broker", f"half message {m['topic']} stored"))
        for h in m["history"]:
            events.append((_ts(h["at"]), "broker", f"{h['kind']}: {_describe(h['detail'])}"))
    for service, part in d["participants"].items():
        for b in part["barrier"]:
            held = ", holds" if b["held"] else ""
            events.append((_ts(b["at"]), service, f"barrier {b['branch']}/{b['op']}: {b['outcome']}{held}"))
        for p in part["prepared"]:
            events.append((_ts(p["prepared"]), service, f"PREPARE TRANSACTION {p['gid']} (still prepared)"))
        for e in part["effects"]:
            what = (f"{e['sku']} x{e['qty']} {e['status']}" if service == "inventory"
                    else f"payment {e['amount_cents'] / 100:.2f} {e['status']}")
            events.append((_ts(e["updated_at"]), service, what))
    if g := d["global"]:
        for ts, text in g.get("timeline", []):
            events.append((ts, "coordinator", text))
        for name, branch in g.get("branches", {}).items():
            for ts, text in branch.get("timeline", []):
                events.append((ts, "coordinator", f"{name}: {text}"))
    known = sorted((e for e in events if e[0] is not None), key=lambda e: e[0])
    return [{"ts": ts, "where": where, "what": what} for ts, where, what in
            known + [e for e in events if e[0] is None]]


def _describe(detail: Any) -> str:
    if isinstance(detail, dict):
        return ", ".join(f"{k} {v}" for k, v in detail.items())
    return str(detail)


def waterfall(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spans in start order, each with its depth under its parent and its offset and width as percentages of
    the whole trace: the bars of a waterfall."""
    if not spans:
        return []
    start = min(s["start"] for s in spans)
    end = max(s.get("end") or s["start"] for s in spans)
    total = max(end - start, 1e-6)
    by_id = {s["span_id"]: s for s in spans}

    def depth(span: dict[str, Any]) -> int:
        d, seen = 0, set()
        while (parent := by_id.get(span.get("parent_id") or "")) is not None and parent["span_id"] not in seen:
            seen.add(parent["span_id"])
            span, d = parent, d + 1
        return d

    return [s | {"depth": min(depth(s), 12), "offset": 100 * (s["start"] - start) / total,
                 "width": max(100 * ((s.get("end") or s["start"]) - s["start"]) / total, 0.3),
                 "ms": 1000 * ((s.get("end") or s["start"]) - s["start"])}
            for s in sorted(spans, key=lambda s: s["start"])]


# ----------------------------------------------------------------------------- raft
async def raft_cluster(http: httpx.AsyncClient, urls: list[str]) -> dict[str, Any]:
    """Each node's `/raft/status` (None when down), and the elections: who became leader in which term."""

    async def one(url: str) -> tuple[dict | None, list[dict]]:
        try:
            status = (await http.get(f"{url}/raft/status", timeout=1.0)).json()
            events = (await http.get(f"{url}/raft/events", timeout=1.0)).json()["events"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None, []
        return status, events

    answers = await asyncio.gather(*(one(u) for u in urls))
    statuses = [status for status, _ in answers]
    elections = sorted(({"t": e["t"], "node": e["node"], "term": e.get("term")} for _, events in answers
                        for e in events if e.get("kind") == "role" and e.get("role") == "leader"),
                       key=lambda e: e["t"])
    leader = next((s for s in statuses if s and s.get("role") == "leader"), None)
    nodes = []
    for i, (url, status) in enumerate(zip(urls, statuses, strict=True), start=1):
        progress = (leader or {}).get("progress", {})
        peer = progress.get(str(i)) or progress.get(i) or {}
        nodes.append({"id": i, "url": url, "status": status, "match": peer.get("match"), "next": peer.get("next")})
    return {"nodes": nodes, "elections": elections[-20:], "running": any(statuses),
            "leader": leader["id"] if leader else None, "term": max((s["term"] for s in statuses if s), default=None)}


# ----------------------------------------------------------------------------- cache ring
def ring_arcs(app: FastAPI) -> list[dict[str, Any]]:
    """The circle's arcs, consecutive points of one owner merged: (owner, start, end) as fractions of the
    circle; a point owns the arc that ends at it (clockwise)."""
    ring = app.state.cache.ring
    points, owners = [int(p) for p in ring.points], ring.owners
    if not points:
        return []
    arcs: list[dict[str, Any]] = []
    circle = float(2 ** 32)
    previous = points[-1] - 2 ** 32
    for point, owner in zip(points, owners, strict=True):
        if arcs and arcs[-1]["owner"] == owner:
            arcs[-1]["end"] = point / circle
        else:
            arcs.append({"owner": owner, "start": previous / circle, "end": point / circle})
        previous = point
    return arcs


def node_stats(per_service: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Hits and misses per cache node, summed over the services."""
    total: dict[str, Counter[str]] = defaultdict(Counter)
    for stats in per_service.values():
        for node, s in stats.items():
            total[node]["hits"] += int(s.get("hits", 0))
            total[node]["misses"] += int(s.get("misses", 0))
    return {node: dict(c) for node, c in sorted(total.items())}

