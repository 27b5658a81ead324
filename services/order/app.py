from fastapi import FastAPI

from services.common.service_app import create_service_app
from services.order.api import router
from services.order.handlers import HANDLERS


def create_app() -> FastAPI:
    return create_service_app("order", router, HANDLERS)
