from fastapi import FastAPI

from services.payment import tcc
from services.payment.api import router
from services.payment.handlers import HANDLERS
from services.runtime.app import create_service_app


def create_app() -> FastAPI:
    app = create_service_app("payment", router, HANDLERS)
    app.include_router(tcc.router)  # the TCC participant's Try / Confirm / Cancel
    return app
