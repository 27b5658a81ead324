from fastapi import FastAPI

from services.inventory.api import router
from services.inventory.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    return create_service_app("inventory", router, HANDLERS)
