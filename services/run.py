"""Run one service in the foreground: `python -m services.run order|inventory|payment|admin|broker`."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.common.settings import get_settings

APPS = {
    "order": "services.order.app:create_app",
    "inventory": "services.inventory.app:create_app",
    "payment": "services.payment.app:create_app",
    "admin": "services.admin.app:create_app",
    "broker": "broker.app:create_app",
}


def serve(name: str) -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uvicorn.run(APPS[name], factory=True, host=settings.host, port=settings.port(name), log_level="warning",
                access_log=False, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in APPS:
        sys.exit(f"usage: python -m services.run {{{'|'.join(APPS)}}}")
    serve(sys.argv[1])
