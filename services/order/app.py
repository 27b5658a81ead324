from fastapi import FastAPI

from services.order import coordinated, halfmsg
from services.order.api import router
from services.order.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    app = create_service_app("order", router, HANDLERS, background=[coordinated.recover])
    app.include_router(halfmsg.router)  # the half-message broker's check-back
    app.include_router(coordinated.router)  # the coordinator's reports
    return app
