"""Traces across HTTP, RabbitMQ and PostgreSQL, with OpenTelemetry's API: one order is one trace.

The W3C `traceparent` travels in HTTP headers, in AMQP message headers and, through the outbox, inside the
envelope itself (an event written now is published later, by the relay, outside any request). The packaged
instrumentations of aio-pika and SQLAlchemy do not cover our versions, so it is carried here by hand:

* `traced_transport` wraps httpx: a client span per call, its context in the `traceparent` header;
* `publishing` and `consuming` open the producer and consumer spans of a message;
* `trace_engine` gives every SQL statement a span, under whatever span is current.

Until a process calls `services.runtime.telemetry.setup`, the tracer records nothing and costs next to nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

tracer = trace.get_tracer("txlab")
_W3C = TraceContextTextMapPropagator()
QUIET_HEADER = "x-txlab-quiet"  # a call made while `untraced`: its server leaves it out too
_untraced: contextvars.ContextVar[bool] = contextvars.ContextVar("txlab_untraced", default=False)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Calls made meanwhile are neither spans here nor at their server: the dashboard polls several times a
    second, and its polls would push the traces worth seeing out of every process's ring."""
    token = _untraced.set(True)
    try:
        yield
    finally:
        _untraced.reset(token)


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def context_of(traceparent: object) -> otel_context.Context | None:
    """The context a `traceparent` names; None (no parent: a new trace) for anything that is not one. It comes
    from messages and requests, so it never raises: telemetry must not stop a message."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("latin-1")
    if not isinstance(traceparent, str) or not traceparent:
        return None
    try:
        return _W3C.extract({"traceparent": traceparent})
    except Exception:
        return None


def current_traceparent() -> str | None:
    """The `traceparent` of the span that is current, or None outside any span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def trace_id_of(traceparent: object) -> str | None:
    """The trace id (32 hex digits) inside a `traceparent`."""
    parts = traceparent.split("-") if isinstance(traceparent, str) else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def failed(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{exc.__class__.__name__}: {exc}"[:300]))


@contextlib.contextmanager
def publishing(topic: str, traceparent: str | None, **attributes: Any) -> Iterator[dict[str, str]]:
    """The producer span of one message, under the span `traceparent` names (the one that wrote it); yields the
    AMQP headers that carry the publish span's own context to the consumer."""
    with tracer.start_as_current_span(f"publish {topic}", context=context_of(traceparent), kind=SpanKind.PRODUCER,
                                      attributes=_clean(attributes | {"messaging.destination": topic}),
                                      record_exception=False) as span:
        headers: dict[str, str] = {}
        _W3C.inject(headers)
        try:
            yield headers
        except BaseException as exc:
            failed(span, exc)
            raise


def start_consuming(topic: str, headers: Mapping[str, Any] | None, traceparent: str | None,
                    **attributes: Any) -> Span:
    """Start the consumer span of one message: under the publish span its AMQP headers name, else under the
    envelope's own `traceparent`. The caller ends it."""
    parent = context_of((headers or {}).get("traceparent")) if isinstance(headers, Mapping) else None
    return tracer.start_span(f"consume {topic}", context=parent or context_of(traceparent), kind=SpanKind.CONSUMER,
                             attributes=_clean(attributes | {"messaging.destination": topic}))


@contextlib.contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Make `span` the current one (its children and the events written meanwhile belong to it)."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


_consuming: dict[uuid.UUID, Span] = {}  # the consumer spans of the messages being applied, by message id


@contextlib.contextmanager
def consumer_spans(spans: Mapping[uuid.UUID, Span]) -> Iterator[None]:
    """While a batch is applied: its messages' consumer spans, for `handling` to find."""
    _consuming.update(spans)
    try:
        yield
    finally:
        for message_id in spans:
            _consuming.pop(message_id, None)


@contextlib.contextmanager
def handling(message_id: uuid.UUID, order_id: object = None) -> Iterator[None]:
    """Handle one message under its consumer span (its statements and the events it causes belong to it), with
    its order id on every log line written meanwhile."""
    with current(_consuming.get(message_id)), structlog.contextvars.bound_contextvars(
            order_id=str(order_id) if order_id else None):
        yield


@contextlib.contextmanager
def about(**ids: Any) -> Iterator[None]:
    """Name what the work at hand is about (`order_id`, `gid`): on the current span, and on every log line
    written meanwhile."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(_clean(ids))
    with structlog.contextvars.bound_contextvars(**{k: str(v) for k, v in ids.items() if v is not None}):
        yield


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | bool | int | float) else str(v)[:200] for k, v in attributes.items()
            if v is not None}


class TracedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that opens a client span per request and sends its context as `traceparent`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _untraced.get():
            request.headers[QUIET_HEADER] = "1"
            return await self.inner.handle_async_request(request)
        with tracer.start_as_current_span(f"{request.method} {request.url.path}", kind=SpanKind.CLIENT,
                                          attributes={"http.method": request.method, "http.url": str(request.url)},
                                          record_exception=False) as span:
            _W3C.inject(request.headers)
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                failed(span, exc)
                raise
            span.set_attribute("http.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Aiohttp(AiohttpTransport):
    """httpx-aiohttp's transport, raising `httpx.ConnectError` for a refused connection as httpx does (0.2 raises
    ConnectTimeout: its table puts aiohttp's general connection error first). A refused connection is how a caller
    tells a process that is down (admin leaves out a coordinator replica that is not running)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TimeoutException as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, aiohttp.ServerTimeoutError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            raise


def http_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """An httpx transport that sends with aiohttp (httpx-aiohttp): httpcore's pool checks every pooled connection's
    socket on each request, and that was a fifth of the order service's CPU in a tcc run (measured); aiohttp's
    pool hands a connection out in constant time."""
    return _Aiohttp(limits=limits)


def traced_client(limits: httpx.Limits | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose calls are spans of the current trace, sent with aiohttp (`http_transport`)."""
    inner = http_transport(limits or httpx.Limits(max_connections=100, max_keepalive_connections=20))
    return httpx.AsyncClient(transport=TracedTransport(inner), **kwargs)


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's `traceparent` added (for a client that is not httpx)."""
    _W3C.inject(headers)
    return headers


def _verb(statement: str) -> str:
    words = statement.split(None, 2)
    if not words:
        return "SQL"
    verb = words[0].upper()
    return f"{verb} {words[1].upper()}" if verb in ("PREPARE", "COMMIT", "ROLLBACK") and len(words) > 1 else verb


@contextlib.contextmanager
def statement_span(statement: str) -> Iterator[None]:
    """A `db <VERB>` span for one statement sent without SQLAlchemy (psycopg's prepared transactions)."""
    if not trace.get_current_span().is_recording():
        yield
        return
    with tracer.start_as_current_span(f"db {_verb(statement)}", kind=SpanKind.CLIENT, record_exception=False,
                                      attributes={"db.system": "postgresql", "db.statement": statement[:300]}) as span:
        try:
            yield
        except BaseException as exc:
            failed(span, exc)
            raise


def trace_engine(engine: AsyncEngine) -> None:
    """A span per SQL statement, under the current span; none outside a trace (a relay's poll, say)."""

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if context is None or not trace.get_current_span().is_recording():
            return
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._txlab_span = tracer.start_span(
            f"db {verb}", kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.statement": statement[:300], "db.executemany": executemany})

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        span = context.__dict__.pop("_txlab_span", None) if context is not None else None
        if span is not None:
            span.end()

    @event.listens_for(engine.sync_engine, "handle_error")
    def error(exception_context: Any) -> None:
        context = exception_context.execution_context
        span = context.__dict__.pop("_txlab_span", None) if context is not None else None
        if span is not None:
            failed(span, exception_context.original_exception)
            span.end()
