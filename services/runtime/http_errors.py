"""Bad input is a 4xx with a message; an unavailable dependency a 503; never a stack trace."""

from __future__ import annotations

import asyncpg
import psycopg
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.faults import InjectedFault

MAX_BODY_BYTES = 64 * 1024


def install_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(sa.exc.TimeoutError)
    async def pool_exhausted(_: Request, exc: sa.exc.TimeoutError) -> JSONResponse:
        return JSONResponse({"detail": "the database is busy; try again"}, status_code=503)

    @app.exception_handler(psycopg.Error)
    async def pg_error(_: Request, exc: psycopg.Error) -> JSONResponse:
        if isinstance(exc, psycopg.DataError):
            return JSONResponse({"detail": "the database refused this input"}, status_code=422)
        return JSONResponse({"detail": "the database could not serve this request"}, status_code=503)

    @app.exception_handler(asyncpg.PostgresError)
    async def asyncpg_error(_: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        if isinstance(exc, asyncpg.DataError):  # the statements the pipeline sends with asyncpg itself
            return JSONResponse({"detail": "the database refused this input"}, status_code=422)
        return JSONResponse({"detail": "the database could not serve this request"}, status_code=503)

    @app.exception_handler(asyncpg.InterfaceError)
    async def asyncpg_client_error(_: Request, exc: asyncpg.InterfaceError) -> JSONResponse:
        if isinstance(exc, ValueError):  # a parameter asyncpg cannot encode: nothing was sent
            return JSONResponse({"detail": "the database refused this input"}, status_code=422)
        return JSONResponse({"detail": "the database is unavailable"}, status_code=503)

    @app.exception_handler(PoolTimeout)
    async def pg_pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse({"detail": "the database is busy; try again"}, status_code=503)

    @app.exception_handler(InjectedFault)
    async def injected(_: Request, exc: InjectedFault) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(OSError)
    async def unavailable(_: Request, exc: OSError) -> JSONResponse:
        return JSONResponse({"detail": f"a dependency is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(sa.exc.OperationalError)
    async def db_unavailable(_: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database is unavailable"}, status_code=503)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length, or, for a chunked body, once more than that came
    (pure ASGI: cheap)."""

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
        if length is not None:  # the server holds the body to its Content-Length: nothing more can come
            await self.app(scope, receive, send)
            return
        # no Content-Length (chunked): read the body here, up to the limit, and hand it on as one message. Raising
        # from the app's receive instead would reach FastAPI's body parser, which answers 400, not 413
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: no one to answer
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, when the client goes away

        await self.app(scope, replay, send)
