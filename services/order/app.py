from fastapi import FastAPI

from services.order.api import router
from services.order.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app("order", router, HANDLERS)
