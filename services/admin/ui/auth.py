"""Who may see the dashboard: the admin bearer token, or the session cookie the login form sets.

The cookie holds an HMAC of the admin token, never the token itself; it is HttpOnly (no script reads it),
SameSite=Strict (no other site's page makes the browser send it) and scoped to /ui. Changing the admin token
ends every session. SameSite does not tell ports apart (a page on another port of 127.0.0.1 is the same
site), so an action sent with the cookie must also come from the dashboard's own origin: the browser says so
in Sec-Fetch-Site, and htmx's HX-Request header cannot be sent from another origin without a preflight that
admin never grants."""

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


class ForeignOrigin(Exception):
    """An action carried the session cookie but came from a page of another origin."""


def _same_origin(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")  # none: typed by the user, not sent by a page
    return request.headers.get("hx-request") == "true"


async def require_login(request: Request) -> None:  # async: checked on the loop, not in a worker thread
    if not authorised(request):
        raise LoginRequired
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    by_token = scheme.lower() == "bearer" and token_matches(request.app.state.settings, token)
    if request.method not in ("GET", "HEAD") and not by_token and not _same_origin(request):
        raise ForeignOrigin
