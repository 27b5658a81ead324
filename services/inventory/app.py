from fastapi import FastAPI

from services.inventory import tcc
from services.inventory.api import router
from services.inventory.handlers import HANDLERS, lock_stock
from services.runtime.app import create_service_app
from services.runtime.prepared import prepared_router, resolve_prepared


def create_app() -> FastAPI:
    app = create_service_app("inventory", router, HANDLERS, background=[resolve_prepared], prepared=True,
                             prepare=lock_stock)
    app.include_router(tcc.router)  # the TCC participant's Try / Confirm / Cancel
    # the 2PC and 3PC participant, with the same effects held in a prepared transaction
    app.include_router(prepared_router("inventory", tcc.InventoryTry, tcc.EFFECTS, tcc.can_reserve))
    return app
