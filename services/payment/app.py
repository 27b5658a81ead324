from fastapi import FastAPI

from services.payment import tcc
from services.payment.api import router
from services.payment.handlers import HANDLERS, lock_money
from services.runtime.app import create_service_app
from services.runtime.prepared import prepared_router, resolve_prepared


def create_app() -> FastAPI:
    app = create_service_app("payment", router, HANDLERS, background=[resolve_prepared], prepared=True,
                             prepare=lock_money)
    app.include_router(tcc.router)  # the TCC participant's Try / Confirm / Cancel
    # the 2PC and 3PC participant, with the same effects held in a prepared transaction
    app.include_router(prepared_router("payment", tcc.PaymentTry, tcc.EFFECTS, tcc.can_pay))
    return app
