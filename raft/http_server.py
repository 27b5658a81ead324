"""A small HTTP/1.1 server on asyncio + httptools, with keep-alive: the node's client-facing front door.

Why not FastAPI/uvicorn: the KV API is five routes with tiny JSON bodies, and per-request framework cost
sits on every write's critical path. `txlab bench raft --frontends` measures the front ends alone (no Raft
behind them) with the benchmark's client; on a shared 2-core machine this server answered 2.4-2.5x the
requests/s of FastAPI on uvicorn and 1.1-1.6x those of a bare ASGI app on uvicorn (two runs). Requests
on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

log = logging.getLogger("raft.http")

MAX_BODY = 1024 * 1024
MAX_PIPELINED = 64  # requests queued on one connection before it stops reading

_REASONS = {200: "OK", 204: "No Content", 307: "Temporary Redirect", 400: "Bad Request",
            401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}


@dataclass(slots=True)
class Request:
    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


def _encode(resp: Response, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
            f"content-length: {len(resp.body)}\r\n"]
    if resp.body:
        head.append(f"content-type: {resp.content_type}\r\n")
    for k, v in resp.headers:
        head.append(f"{k}: {v}\r\n")
    if not keep_alive:
        head.append("connection: close\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + resp.body


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.queue: deque[tuple[Request | Response, bool]] = deque()
        self.busy = False
        self.closing = False
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b'{"error":"protocol upgrades are not supported"}')
        except httptools.HttpParserError as exc:
            self._reject(400, b'{"error":"malformed HTTP request: %s"}' % str(exc).encode()[:200])

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size <= MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if self.body_size > MAX_BODY:
            self.queue.append((Response(413, b'{"error":"body larger than 1 MiB"}'), False))
        else:
            url = self.url.decode("latin-1")
            path, _, query = url.partition("?")
            method = self.parser.get_method().decode("latin-1")
            self.queue.append((Request(method, path, query, self.headers, b"".join(self.body)), keep_alive))
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # backpressure: a client pipelining without bound waits
            self.paused = True
        if not self.busy:
            self._next()

    def _reject(self, status: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(_encode(Response(status, body), keep_alive=False))
            self.transport.close()
        self.closing = True

    def _next(self) -> None:
        if self.paused and len(self.queue) < MAX_PIPELINED and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        while self.queue and not self.closing:
            item, keep_alive = self.queue.popleft()
            if isinstance(item, Response):
                self._write(item, keep_alive)
                continue
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve(item, keep_alive))
            return

    async def _serve(self, req: Request, keep_alive: bool) -> None:
        try:
            resp = await self.handler(req)
        except Exception:
            log.exception("unhandled error serving %s %s", req.method, req.path)
            resp = Response(500, b'{"error":"internal error"}')
        self.busy = False
        self._write(resp, keep_alive)
        self._next()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(_encode(resp, keep_alive))
        if not keep_alive:
            self.transport.close()
            self.closing = True


class HttpServer:
    """Serves `handler` on host:port until `close()`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self.handler), host, port,
                                                reuse_address=True, backlog=1024)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
