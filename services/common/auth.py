"""Bearer-token check shared by the admin API and every service's internal routes."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

from services.common.settings import get_settings


def require_token(request: Request) -> None:
    expected = get_settings().admin_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), expected):
        raise HTTPException(401, "missing or wrong admin token (Authorization: Bearer $TXLAB_ADMIN_TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
