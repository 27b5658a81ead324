"""Bearer-token check shared by the admin API and every service's internal routes."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

from services.common.settings import get_settings


async def require_token(request: Request) -> None:
    """The admin token, checked on the event loop (a plain function dependency would run in a worker thread:
    measured, the handoff cost a TCC participant a sixth of its CPU)."""
    settings = getattr(request.app.state, "settings", None) or get_settings()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given, settings.admin_token.encode()):
        raise HTTPException(401, "missing or wrong admin token (Authorization: Bearer $TXLAB_ADMIN_TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
