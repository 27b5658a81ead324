"""The halfmsg pattern (RocketMQ's transactional messages) on the order side: send the half message, run the
local transaction, then commit or roll the message back; and answer the broker's check-back.

1. `POST /messages` to the broker: the order.created envelope, held there, invisible to consumers.
2. The local transaction: the order and its barrier row `(order_id, 'COMMITTED')`, no outbox row.
3. `commit` (or `rollback` when the local transaction failed). If the process dies before this step, or the
   broker is unreachable, the broker checks back.

The check-back (`POST /internal/halfmsg/check`) answers from this database, never from timing:
- the barrier says COMMITTED: the order exists, COMMIT;
- past the local transaction's deadline with no order: insert `(order_id, 'ROLLED_BACK')` and answer
  ROLLBACK. The primary key makes a local transaction still running either finish first (the insert waits
  for it, then finds its row: COMMIT) or fail on its own barrier insert: no order can appear after a
  ROLLBACK was answered;
- before the deadline with no order: UNKNOWN (the broker asks again later).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from services.common.auth import require_token
from services.common.db import Sql
from services.runtime.state import Runtime, runtime

log = logging.getLogger("txlab.order.halfmsg")

TOPIC = "order.created"


class BrokerRefused(RuntimeError):
    """The half-message broker could not store the half message: nothing was placed."""


class TooLate(RuntimeError):
    """A check-back rolled the half message back before the local transaction could commit."""


async def send_half(rt: Runtime, body: dict[str, Any]) -> str:
    """Store the half message; its id. Raises BrokerRefused when the broker does not take it."""
    s = rt.settings
    try:
        response = await rt.http.post(
            f"{s.url('broker')}/messages", headers={"Authorization": f"Bearer {s.admin_token}"},
            json={"topic": TOPIC, "body": body, "producer": "order",
                  "check_url": f"{s.url('order')}/internal/halfmsg/check"})
    except httpx.HTTPError as exc:
        raise BrokerRefused(f"the half-message broker is unreachable ({exc.__class__.__name__})") from exc
    if response.status_code != 201:
        raise BrokerRefused(f"the half-message broker answered {response.status_code}: {response.text[:200]}")
    return str(response.json()["id"])


async def decide(rt: Runtime, message_id: str, decision: str) -> None:
    """Send `commit` or `rollback`; a failure is only logged: the broker's check-back settles it."""
    s = rt.settings
    with contextlib.suppress(httpx.HTTPError):
        response = await rt.http.post(f"{s.url('broker')}/messages/{message_id}/{decision}",
                                      headers={"Authorization": f"Bearer {s.admin_token}"})
        if response.status_code == 200:
            return
        log.warning("broker answered %s to %s of %s: %s", response.status_code, decision, message_id,
                    response.text[:200])
        return
    log.warning("broker unreachable for the %s of %s: its check-back will settle it", decision, message_id)


async def bar(db: Sql, order_id: uuid.UUID) -> None:
    """The local transaction's barrier row; raises TooLate if a check-back already rolled the message back."""
    inserted = await db.fetchval(
        "INSERT INTO halfmsg_barrier (order_id, outcome) VALUES ($1, 'COMMITTED') "
        "ON CONFLICT (order_id) DO NOTHING RETURNING order_id", order_id)
    if inserted is None:
        raise TooLate(f"order {order_id}: a check-back rolled its half message back first")


class CheckBack(BaseModel):
    id: str
    topic: str
    body: dict[str, Any]


router = APIRouter(prefix="/internal/halfmsg", dependencies=[Depends(require_token)], include_in_schema=False)


@router.post("/check")
async def check_back(question: CheckBack, request: Request) -> dict[str, str]:
    rt = runtime(request)
    try:
        order_id = uuid.UUID(str(question.body.get("order_id")))
        sent = datetime.fromisoformat(str(question.body.get("occurred_at")))
    except ValueError:
        return {"decision": "ROLLBACK", "why": "not a message of this producer"}
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    deadline = sent + timedelta(seconds=rt.settings.halfmsg_local_deadline_seconds)
    async with rt.engine.begin() as conn:
        if datetime.now(UTC) < deadline:
            outcome = await conn.scalar(sa.text("SELECT outcome FROM halfmsg_barrier WHERE order_id = :o"),
                                        {"o": order_id})
            if outcome is None:
                return {"decision": "UNKNOWN", "why": "the local transaction may still commit"}
        else:
            # waits for a local transaction holding the same key, then either inserts (none committed) or not
            await conn.execute(sa.text(
                "INSERT INTO halfmsg_barrier (order_id, outcome) VALUES (:o, 'ROLLED_BACK') "
                "ON CONFLICT (order_id) DO NOTHING"), {"o": order_id})
            outcome = await conn.scalar(sa.text("SELECT outcome FROM halfmsg_barrier WHERE order_id = :o"),
                                        {"o": order_id})
    return {"decision": "COMMIT" if outcome == "COMMITTED" else "ROLLBACK"}
