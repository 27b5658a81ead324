"""Run one service in the foreground: `python -m services.run order|inventory|payment|admin|broker|coordinator-N`."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.common.settings import coordinator_node, get_settings

APPS = {
    "order": "services.order.app:create_app",
    "inventory": "services.inventory.app:create_app",
    "payment": "services.payment.app:create_app",
    "admin": "services.admin.app:create_app",
    "broker": "broker.app:create_app",
}


def serve(name: str) -> None:
    settings = get_settings()
    app: object = APPS.get(name)
    if name.startswith("coordinator-"):
        from services.coordinator.app import create_app

        app = create_app(coordinator_node(name), settings)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call between services is noise, and costs
    uvicorn.run(app, factory=isinstance(app, str), host=settings.host, port=settings.port(name), log_level="warning",
                access_log=False, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (sys.argv[1] in APPS or sys.argv[1].startswith("coordinator-")):
        sys.exit(f"usage: python -m services.run {{{'|'.join(APPS)}|coordinator-N}}")
    serve(sys.argv[1])
