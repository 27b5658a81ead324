"""Run one service in the foreground: `python -m services.run order|inventory|payment|admin|broker|coordinator-N`."""

from __future__ import annotations

import sys

import uvicorn

from services.common.settings import coordinator_node, get_settings
from services.runtime.telemetry import setup

# How long a process keeps an idle keep-alive connection open: longer than any client here keeps one (httpx 5 s,
# aiohttp 15 s), so that the client always closes first. When the server's timer ends first (uvicorn's default
# is 5 s, httpx's expiry too), a request sent on the connection as it closes is answered by a reset, and the
# caller sees "Connection reset by peer" for a request that was never read.
KEEP_ALIVE_SECONDS = 65

APPS = {
    "order": "services.order.app:create_app",
    "inventory": "services.inventory.app:create_app",
    "payment": "services.payment.app:create_app",
    "admin": "services.admin.app:create_app",
    "broker": "broker.app:create_app",
}


def serve(name: str) -> None:
    settings = get_settings()
    setup(name, settings)  # before the app: its loggers and tracer are made now
    app: object = APPS.get(name)
    if name.startswith("coordinator-"):
        from services.coordinator.app import create_app

        app = create_app(coordinator_node(name), settings)
    uvicorn.run(app, factory=isinstance(app, str), host=settings.host, port=settings.port(name), log_config=None,
                log_level="warning", access_log=False, timeout_graceful_shutdown=3,
                timeout_keep_alive=KEEP_ALIVE_SECONDS)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (sys.argv[1] in APPS or sys.argv[1].startswith("coordinator-")):
        sys.exit(f"usage: python -m services.run {{{'|'.join(APPS)}|coordinator-N}}")
    serve(sys.argv[1])
