"""Orders whose transaction a coordinator drives (tcc): begin it, hear its outcome, and never lose one.

1. `POST /orders` commits the order PENDING, then begins its global transaction (gid = the order id) on the
   coordinator, with the deadline counted from the order's creation, and answers 201 once it is recorded.
2. The coordinator runs the pattern and reports the outcome to `POST /internal/transactions/outcome`, which
   makes the order PAID or CANCELLED (idempotent: a repeated report answers as the first did).
3. A process that died between 1's commit and the begin, or a coordinator that could not be reached, leaves a
   PENDING order without a transaction: the recovery loop begins it again (a begin is idempotent on the gid),
   with the same deadline. A transaction begun past its deadline is cancelled at once, which is the outcome
   such an order should have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from services.cache.keys import order_key
from services.common.auth import require_token
from services.common.db import pooled
from services.common.settings import Settings
from services.coordinator.client import CoordinatorClient, CoordinatorUnavailable
from services.runtime.state import Runtime, runtime

log = logging.getLogger("txlab.order.coordinated")

COORDINATED = ("tcc", "2pc", "3pc")  # the patterns a coordinator drives
RECOVER_AFTER_SECONDS = 3.0  # a PENDING order this old is begun again (harmless when it was begun already)


class NotBegun(RuntimeError):
    """The order is recorded, but its transaction could not be begun yet; the recovery loop will."""

    created_at: datetime | None = None  # when the order was recorded


def begin_body(settings: Settings, order_id: uuid.UUID, pattern: str, customer_id: str, total_cents: int,
               items: list[tuple[str, int]], created_at: datetime) -> dict[str, Any]:
    """`POST /transactions` for an order: its two branches and its deadline (from the order's creation)."""
    deadline = created_at.timestamp() + settings.tcc_deadline_seconds
    return {"gid": str(order_id), "pattern": pattern, "deadline_ms": int(deadline * 1000), "branches": [
        {"branch": "inventory", "order_id": str(order_id), "items": [{"sku": s, "qty": q} for s, q in items]},
        {"branch": "payment", "order_id": str(order_id), "customer_id": customer_id, "amount_cents": total_cents},
    ]}


async def begin(rt: Runtime, body: dict[str, Any], deadline: float = 8.0) -> None:
    client = CoordinatorClient(rt.settings, rt.http, deadline=deadline)
    try:
        response = await client.request("POST", "/transactions", json=body)
    except CoordinatorUnavailable as exc:
        raise NotBegun(str(exc)) from exc
    if response.status_code not in (200, 201):
        raise NotBegun(f"the coordinator answered {response.status_code}: {response.text[:300]}")


class BranchOutcome(BaseModel):
    outcome: str | None = None
    why: str | None = None


class Outcome(BaseModel):
    gid: str = Field(max_length=128)
    pattern: str
    decision: str = Field(pattern="^(commit|abort)$")
    reason: str | None = Field(None, max_length=2000)
    branches: dict[str, BranchOutcome] = {}


router = APIRouter(prefix="/internal/transactions", dependencies=[Depends(require_token)], include_in_schema=False)


@router.post("/outcome")
async def outcome(body: Outcome, request: Request) -> dict[str, Any]:
    """The coordinator's report: the order becomes PAID or CANCELLED, once."""
    rt = runtime(request)
    try:
        order_id = uuid.UUID(body.gid)
    except ValueError:
        raise HTTPException(404, f"no order {body.gid!r}") from None
    commit = body.decision == "commit"
    status = "PAID" if commit else "CANCELLED"
    stock = body.branches.get("inventory", BranchOutcome())
    stock_status = "RESERVED" if commit else "REJECTED" if stock.outcome == "REJECTED" else "RELEASED"
    payment_status = "CAPTURED" if commit else "FAILED"
    async with pooled(rt.engine) as db:  # one statement, atomic without BEGIN and COMMIT
        changed = await db.fetchval(
            "UPDATE orders SET status = $2, stock_status = $3, payment_status = $4, reason = $5, decided_at = now() "
            "WHERE id = $1 AND status = 'PENDING' AND pattern = $6 RETURNING true",
            order_id, status, stock_status, payment_status, None if commit else body.reason, body.pattern)
        if changed is None:
            current = await db.fetch("SELECT status, pattern FROM orders WHERE id = $1", order_id)
            if not current:
                raise HTTPException(404, f"no order {order_id}")
            now_status, pattern = current[0]
            if pattern != body.pattern or now_status != status:
                raise HTTPException(409, f"order {order_id} is a {pattern} order {now_status}; "
                                         f"cannot make it {status} by a {body.pattern} transaction")
            return {"order_id": str(order_id), "status": status, "repeated": True}
    with contextlib.suppress(Exception):
        await rt.cache.invalidate(order_key(order_id))
    return {"order_id": str(order_id), "status": status}


async def recover(rt: Runtime, every: float = 2.0, batch: int = 200) -> None:
    """Begin again the transaction of every coordinated order left PENDING (see the module docstring): a batch
    at a time, oldest first, going round all of them (orders waiting on a STUCK transaction stay PENDING and
    must not starve the newer ones)."""
    after = datetime.fromtimestamp(0, UTC)
    while True:
        await asyncio.sleep(every)
        try:
            async with rt.engine.connect() as conn:
                orders = (await conn.execute(sa.text(
                    "SELECT id, pattern, customer_id, total_cents, created_at FROM orders "
                    "WHERE status = 'PENDING' AND pattern = ANY(:patterns) AND created_at > :after "
                    "AND created_at < now() - make_interval(secs => :age) ORDER BY created_at LIMIT :n"),
                    {"patterns": list(COORDINATED), "after": after, "age": RECOVER_AFTER_SECONDS, "n": batch})).all()
                items: dict[uuid.UUID, list[tuple[str, int]]] = {}
                if orders:
                    for row in await conn.execute(sa.text(
                            "SELECT order_id, sku, qty FROM order_items WHERE order_id = ANY(:ids) ORDER BY sku"),
                            {"ids": [o.id for o in orders]}):
                        items.setdefault(row.order_id, []).append((row.sku, row.qty))
        except (sa.exc.DBAPIError, OSError) as exc:
            log.warning("recovering coordinated orders: %s", exc)
            continue
        after = orders[-1].created_at if len(orders) == batch else datetime.fromtimestamp(0, UTC)
        for o in orders:
            try:
                await begin(rt, begin_body(rt.settings, o.id, o.pattern, o.customer_id, o.total_cents,
                                           items.get(o.id, []), o.created_at), deadline=3.0)
            except (NotBegun, httpx.HTTPError) as exc:
                log.warning("order %s: its transaction could not be begun yet: %s", o.id, exc)
