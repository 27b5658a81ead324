from fastapi import FastAPI

from services.common.service_app import create_service_app
from services.inventory.api import router
from services.inventory.handlers import HANDLERS


def create_app() -> FastAPI:
    return create_service_app("inventory", router, HANDLERS)
