from fastapi import FastAPI

from services.inventory import tcc
from services.inventory.api import router
from services.inventory.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    app = create_service_app("inventory", router, HANDLERS)
    app.include_router(tcc.router)  # the TCC participant's Try / Confirm / Cancel
    return app
