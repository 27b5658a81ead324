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


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming (pure ASGI: cheap)."""

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
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await refuse(scope, receive, send)
