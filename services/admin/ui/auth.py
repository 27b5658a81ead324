"""Who may see the dashboard: the admin bearer token, or the session cookie the login form sets.

The cookie holds an HMAC of the admin token, never the token itself; it is HttpOnly (no script reads it),
SameSite=Strict (no other site's page can make the browser send it, so the action POSTs cannot be forged) and
scoped to /ui. Changing the admin token ends every session."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

from services.common.settings import Settings

COOKIE = "txlab_ui"


class LoginRequired(Exception):
    """The request carries neither the admin token nor a valid session cookie."""


def session_value(settings: Settings) -> str:
    return hmac.new(settings.admin_token.encode(), b"txlab dashboard session", hashlib.sha256).hexdigest()


def token_matches(settings: Settings, given: str) -> bool:
    return secrets.compare_digest(given.strip().encode("utf-8", "surrogateescape"), settings.admin_token.encode())


def authorised(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_matches(settings, token):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return secrets.compare_digest(cookie.encode("utf-8", "surrogateescape"), session_value(settings).encode())


def require_login(request: Request) -> None:
    if not authorised(request):
        raise LoginRequired
