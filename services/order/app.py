import sqlalchemy as sa
from fastapi import FastAPI

from services.common.settings import get_settings
from services.order import coordinated, halfmsg
from services.order.admission import Admission, AdmitInTurn
from services.order.api import router
from services.order.handlers import HANDLERS, lock_orders
from services.runtime.app import create_service_app
from services.runtime.state import Runtime
from services.runtime.telemetry import Metric, counter, gauge

_BY_PATTERN_AND_STATE = sa.text("SELECT pattern, status, count(*) AS n FROM orders GROUP BY 1, 2")


def create_app() -> FastAPI:
    settings = get_settings()
    admission = Admission(settings.admission_max_pending, settings.admission_target_seconds,
                          wait_seconds=settings.admission_wait_seconds)

    async def admit_while_running(rt: Runtime) -> None:
        await admission.watch(rt.settings.raw_dsn("order"))

    async def metrics(rt: Runtime) -> list[Metric]:
        async with rt.engine.connect() as conn:
            rows = (await conn.execute(_BY_PATTERN_AND_STATE)).all()
        return [gauge("orders", "orders by pattern and state", ["pattern", "state"],
                      [((r.pattern, r.status), r.n) for r in rows]),
                counter("orders_refused", "POST /orders answered 429 (admission control)", [],
                        [((), admission.refused)]),
                gauge("admission_bound", "undecided orders admitted at most, now", [], [((), admission.bound)]),
                gauge("orders_undecided", "orders not yet decided, at the last count", [],
                      [((), admission.pending)]),
                gauge("admission_waiting", "POST /orders waiting in line for room, now", [],
                      [((), len(admission.waiting))])]

    app = create_service_app("order", router, HANDLERS, settings,
                             background=[coordinated.recover, admit_while_running], prepare=lock_orders,
                             metrics=metrics)
    app.state.admission = admission
    app.add_middleware(AdmitInTurn, admission=admission)
    app.include_router(halfmsg.router)  # the half-message broker's check-back
    app.include_router(coordinated.router)  # the coordinator's reports
    return app
