from fastapi import FastAPI

from services.common.settings import get_settings
from services.order import coordinated, halfmsg
from services.order.admission import Admission
from services.order.api import router
from services.order.handlers import HANDLERS, lock_orders
from services.runtime.app import create_service_app
from services.runtime.state import Runtime


def create_app() -> FastAPI:
    settings = get_settings()
    admission = Admission(settings.admission_max_pending, settings.admission_target_seconds)

    async def admit_while_running(rt: Runtime) -> None:
        await admission.watch(rt.settings.raw_dsn("order"))

    app = create_service_app("order", router, HANDLERS, settings,
                             background=[coordinated.recover, admit_while_running], prepare=lock_orders)
    app.state.admission = admission
    app.include_router(halfmsg.router)  # the half-message broker's check-back
    app.include_router(coordinated.router)  # the coordinator's reports
    return app
