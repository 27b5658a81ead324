from fastapi import FastAPI

from services.payment.api import router
from services.payment.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app("payment", router, HANDLERS)
