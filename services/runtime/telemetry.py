"""What every txlab process tells about itself: traces, JSON logs, Prometheus metrics and liveness.

* `setup(process)` (once per process, by `services.run`): the OpenTelemetry tracer provider, exporting to
  `TXLAB_OTLP_ENDPOINT` when it is set, and structlog's JSON lines on stderr, each with the trace, order and
  global transaction it belongs to.
* Each process keeps a bounded ring of its recent spans, log lines and fired faults; `GET
  /internal/telemetry` serves it and admin merges every process's for the dashboard, so the dashboard's
  waterfall works with nothing else running.
* `install(app, process, metrics)`: `/metrics` (Prometheus text; gauges and counters by pattern, state,
  node or service, never by order or transaction), `/alive` (the process answers) and `/internal/telemetry`.
  Every app is made with `FastAPI(telemetry=TELEMETRY)`: FastAPI's own server span per request.
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Response
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from services.common.auth import require_token
from services.common.faults import FIRED
from services.common.settings import Settings
from services.common.tracing import QUIET_HEADER
from services.runtime.ring_tracer import Kept, RingTracer, RingTracerProvider

TRACE_ID = r"^[0-9a-f]{32}$"
KINDS = r"^(spans|logs|faults)(,(spans|logs|faults))*$"  # which of its rings a telemetry request reads
ALL_KINDS = "spans,logs,faults"
SPANS_KEPT = 5_000
LOGS_KEPT = 2_000
QUIET_PATHS = frozenset({"/health", "/alive", "/metrics", "/internal/telemetry", "/internal/messaging",
                         "/internal/stats", "/raft/status", "/raft/events", "/ui/events"})  # polled, not traced


@dataclass
class Ring:
    """This process's recent spans and log lines (oldest dropped first); its fired faults are `faults.FIRED`."""

    process: str = "?"
    spans: deque[Kept] = field(default_factory=lambda: deque(maxlen=SPANS_KEPT))
    logs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOGS_KEPT))


RING = Ring()


def span_dict(span: Kept) -> dict[str, Any]:
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}",
            "parent_id": f"{span.parent_id:016x}" if span.parent_id else None, "name": span.name,
            "kind": span.kind, "process": RING.process, "start": span.start_ns / 1e9, "end": span.end_ns / 1e9,
            "status": "error" if span.error else "ok", "attributes": dict(span.attributes)}


def _with_trace(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", f"{span.trace_id:032x}")
        event.setdefault("span_id", f"{span.span_id:016x}")
    return event


def _into_ring(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    RING.logs.append({"ts": time.time(), "process": RING.process, "level": event.get("level", method),
                      "logger": event.get("logger"), "message": event.get("event"),
                      "trace_id": event.get("trace_id"), "order_id": event.get("order_id"),
                      "gid": event.get("gid"), "exception": (event.get("exception") or "")[-2000:] or None})
    return event


_set_up = False


def setup(process: str, settings: Settings) -> None:
    """Tracing and JSON logging for this process (idempotent)."""
    global _set_up
    RING.process = process
    if _set_up:
        return
    _set_up = True
    if settings.tracing:
        export = None
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            export = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5))
        resource = Resource.create({"service.name": f"txlab-{process}"})
        provider = RingTracerProvider(RingTracer(RING.spans.append, export, resource))
        trace.set_tracer_provider(provider)
        if export is not None:
            atexit.register(provider.shutdown)  # what the exporter still holds is sent before the process ends
    shared: list[Any] = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                         structlog.stdlib.add_logger_name, _with_trace,
                         structlog.processors.TimeStamper(fmt="iso", utc=True)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    _into_ring, _drop_empty, structlog.processors.JSONRenderer()]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    structlog.configure(processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
                        logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=True)
    for quiet in ("aio_pika", "aiormq", "alembic", "httpx"):  # a line per call between services is noise
        logging.getLogger(quiet).setLevel(logging.WARNING)


def _drop_empty(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if v is not None}


def _quiet(scope: MutableMapping[str, Any]) -> bool:
    path = scope.get("path", "")
    return (path in QUIET_PATHS or path.startswith("/ui/static")
            or any(name == _QUIET for name, _ in scope.get("headers", ())))


_QUIET = QUIET_HEADER.encode()


# FastAPI's own tracing: a server span per request under the caller's `traceparent`, named by the route;
# requests that are polled all the time are left out, and so are the spans of each request's inner steps
TELEMETRY: TelemetryConfig = {"tracing": True, "operation_spans": False, "metrics": False, "logs": False,
                              "auto_configure": False, "exclude": _quiet}


Collect = Callable[[], Awaitable[Iterable[Metric]]]


class _Latest(Collector):
    """The metrics a process gathered for the scrape in progress."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics)


def gauge(name: str, doc: str, labels: list[str], values: Iterable[tuple[Iterable[str], float]]) -> Metric:
    family = GaugeMetricFamily(f"txlab_{name}", doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def counter(name: str, doc: str, labels: list[str], values: Iterable[tuple[Iterable[str], float]]) -> Metric:
    family = CounterMetricFamily(f"txlab_{name}", doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def install(app: FastAPI, process: str, collect: Collect | None = None) -> None:
    """`/metrics`, `/alive`, `/internal/telemetry` and a server span per request, on one process's app."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    latest = _Latest()
    registry.register(latest)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        latest.metrics = list(await collect()) if collect is not None else []
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/alive", include_in_schema=False)
    async def alive() -> dict[str, str]:
        """The process answers (it may still be unable to serve: that is /health)."""
        return {"status": "alive", "process": process}

    internal = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)

    @internal.get("/telemetry")
    async def telemetry(trace_id: str | None = Query(None, pattern=TRACE_ID), order_id: str | None = None,
                        since: float = 0.0, limit: int = Query(500, ge=1, le=SPANS_KEPT),
                        kinds: str = Query(ALL_KINDS, pattern=KINDS)) -> dict[str, Any]:
        """This process's recent spans, log lines and fired faults, newest last (filtered by trace or order)."""
        return recent(trace_id, order_id, since, limit, kinds)

    app.include_router(internal)


def recent(trace_id: str | None, order_id: str | None, since: float, limit: int,
           kinds: str = ALL_KINDS) -> dict[str, Any]:
    """The ring's newest spans, log lines and fired faults (of one trace, or of the trace that names an order);
    only the `kinds` asked for are read, the others are empty."""
    faults = [f for f in list(FIRED) if f["ts"] >= since][-limit:] if "faults" in kinds else []
    if "spans" not in kinds and "logs" not in kinds:  # the dashboard's poll of what fired
        return {"process": RING.process, "spans": [], "logs": [], "faults": faults}
    spans = list(RING.spans)
    wanted: int | None = int(trace_id, 16) if trace_id else None
    if order_id and wanted is None:  # an order's trace: the one its spans name
        wanted = next((s.trace_id for s in reversed(spans) if s.attribute("order_id") == order_id), None)
        if wanted is None:
            return {"process": RING.process, "spans": [], "logs": [], "faults": []}
    since_ns = since * 1e9
    chosen = [s for s in spans if s.end_ns >= since_ns and (wanted is None or s.trace_id == wanted)]
    hex_id = f"{wanted:032x}" if wanted is not None else None
    logs = [entry for entry in list(RING.logs) if entry["ts"] >= since and (
        hex_id is None or entry["trace_id"] == hex_id or (order_id and entry["order_id"] == order_id))]
    return {"process": RING.process, "spans": [span_dict(s) for s in chosen[-limit:]] if "spans" in kinds else [],
            "logs": logs[-limit:] if "logs" in kinds else [], "faults": faults}
