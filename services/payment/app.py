from fastapi import FastAPI

from services.common.service_app import create_service_app
from services.payment.api import router
from services.payment.handlers import HANDLERS


def create_app() -> FastAPI:
    return create_service_app("payment", router, HANDLERS)
