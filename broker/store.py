"""The broker's records: half messages, their state machine and their history, in PostgreSQL.

States: HALF (stored, invisible to consumers) -> COMMITTED (to be delivered) -> DELIVERED, or HALF ->
ROLLED_BACK; a HALF message whose producer answered no check-back with a decision before the check limit
is PARKED, and an operator resolves it by commit or rollback. Every change is one conditional UPDATE, so
the producer's decision, a check-back's answer and an operator's hand can race without harm: the first
one wins and the others find the message no longer where they expected it.

Work is claimed with a lease (`claimed_by`, `claimed_until`) through `FOR UPDATE SKIP LOCKED`: several
broker processes can run at once, and no message is checked back or delivered by two of them together.
A process that dies leaves its claims to expire.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import fetch_alone


class State(enum.StrEnum):
    HALF = "HALF"
    COMMITTED = "COMMITTED"
    DELIVERED = "DELIVERED"
    ROLLED_BACK = "ROLLED_BACK"
    PARKED = "PARKED"


class Decision(enum.StrEnum):
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    UNKNOWN = "UNKNOWN"


# the state a decision leads to, and the states in which that decision was already taken
OUTCOME = {Decision.COMMIT: State.COMMITTED, Decision.ROLLBACK: State.ROLLED_BACK}
ALREADY = {Decision.COMMIT: (State.COMMITTED, State.DELIVERED), Decision.ROLLBACK: (State.ROLLED_BACK,)}
UNDECIDED = (State.HALF, State.PARKED)


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The opposite decision was taken already."""

    def __init__(self, state: State) -> None:
        super().__init__(f"the message is already {state.value}")
        self.state = state


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    topic: str
    body: dict[str, Any]
    check_url: str
    attempts: int  # check-backs answered UNKNOWN so far, or delivery attempts refused, by what was claimed


async def _history(conn: AsyncConnection, message_id: uuid.UUID, kind: str, **detail: Any) -> None:
    await conn.execute(sa.text("INSERT INTO half_message_history (message_id, kind, detail) "
                               "VALUES (:id, :kind, CAST(:detail AS jsonb))"),
                       {"id": message_id, "kind": kind, "detail": _detail(**detail)})


# A message and its first history row, in one statement (PostgreSQL makes it atomic: no BEGIN and COMMIT)
_CREATE = (
    "WITH m AS (INSERT INTO half_messages (id, topic, body, producer, check_url, state, next_check_at) "
    "VALUES ($1, $2, $3::text::jsonb, $4, $5, 'HALF', now() + make_interval(secs => $6)) RETURNING id) "
    "INSERT INTO half_message_history (message_id, kind, detail) SELECT id, 'transition', $7::text::jsonb FROM m")
# A decision and its history row, in one statement
_DECIDE = (
    "WITH d AS (UPDATE half_messages SET state = $2::text, updated_at = now(), claimed_by = NULL, "
    "claimed_until = NULL, next_delivery_at = CASE WHEN $2::text = 'COMMITTED' THEN now() END "
    "WHERE id = $1 AND state IN ('HALF', 'PARKED') RETURNING id) "
    "INSERT INTO half_message_history (message_id, kind, detail) SELECT id, 'transition', $3::text::jsonb FROM d "
    "RETURNING message_id")
# read on its own, not in the statement above: its snapshot would show the state from before a decision that
# committed while the statement waited for the row (a check-back's), and report a conflict that is none
_STATE = "SELECT state FROM half_messages WHERE id = $1"


def _detail(**detail: Any) -> str:
    return json.dumps(detail)


async def create(engine: AsyncEngine, topic: str, body: dict[str, Any], producer: str, check_url: str,
                 immunity_seconds: float) -> uuid.UUID:
    """Store a HALF message; its first check-back falls due after the immunity time."""
    message_id = uuid.uuid4()
    await fetch_alone(engine, _CREATE, message_id, topic, json.dumps(body), producer, check_url,
                      float(immunity_seconds), _detail(to=State.HALF, by=producer))
    return message_id


async def decide(engine: AsyncEngine, message_id: uuid.UUID, decision: Decision, by: str) -> tuple[State, bool]:
    """Commit or roll back an undecided message. Returns its state and whether this call changed it (False:
    the same decision was taken before). Raises NotFound, or Conflict if the opposite decision was."""
    to = OUTCOME[decision]
    if await fetch_alone(engine, _DECIDE, message_id, to.value, _detail(to=to, by=by)):
        return to, True
    rows = await fetch_alone(engine, _STATE, message_id)
    if not rows:
        raise NotFound(str(message_id))
    state = State(rows[0][0])
    if state in ALREADY[decision]:
        return state, False
    raise Conflict(state)


async def claim_checks(engine: AsyncEngine, me: str, lease_seconds: float, limit: int,
                       ids: list[uuid.UUID] | None = None) -> list[Claimed]:
    """Claim HALF messages whose check-back is due (or, with `ids`, those undecided ones at once)."""
    where = ("state IN ('HALF', 'PARKED') AND id = ANY(:ids)" if ids is not None
             else "state = 'HALF' AND next_check_at <= now()")
    async with engine.begin() as conn:
        rows = (await conn.execute(sa.text(
            "UPDATE half_messages SET claimed_by = :me, claimed_until = now() + make_interval(secs => :lease) "
            "WHERE id IN (SELECT id FROM half_messages "
            f"  WHERE {where} AND (claimed_until IS NULL OR claimed_until < now()) "
            "  ORDER BY next_check_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "RETURNING id, topic, body, check_url, checks"),
            {"me": me, "lease": lease_seconds, "limit": limit, "ids": ids or []})).all()
    return [Claimed(r.id, r.topic, r.body, r.check_url, r.checks) for r in rows]


async def record_check(engine: AsyncEngine, me: str, message_id: uuid.UUID, answer: Decision, error: str | None,
                       interval_seconds: float, max_checks: int) -> State | None:
    """Apply a check-back's answer to a message this process claimed: COMMIT or ROLLBACK decides it, UNKNOWN
    (no answer, an error) counts one check and schedules the next one, or parks it at the limit. Returns the
    new state, or None when the message was decided meanwhile (the answer is then only recorded)."""
    async with engine.begin() as conn:
        if answer in OUTCOME:
            to = OUTCOME[answer]
            row = (await conn.execute(sa.text(
                "UPDATE half_messages SET state = :to, updated_at = now(), claimed_by = NULL, "
                "claimed_until = NULL, last_error = NULL, "
                "next_delivery_at = CASE WHEN :to = 'COMMITTED' THEN now() END "
                "WHERE id = :id AND state IN ('HALF', 'PARKED') AND claimed_by = :me RETURNING checks"),
                {"id": message_id, "to": to.value, "me": me})).first()
        else:
            row = (await conn.execute(sa.text(
                "UPDATE half_messages SET checks = checks + 1, updated_at = now(), claimed_by = NULL, "
                "claimed_until = NULL, last_error = :error, "
                "state = CASE WHEN checks + 1 >= :max THEN 'PARKED' ELSE state END, "
                "next_check_at = now() + make_interval(secs => :interval) "
                "WHERE id = :id AND state IN ('HALF', 'PARKED') AND claimed_by = :me RETURNING checks, state"),
                {"id": message_id, "me": me, "max": max_checks, "interval": interval_seconds,
                 "error": error})).first()
        await _history(conn, message_id, "check", answer=answer, error=error, by=me, applied=row is not None)
        if row is None:
            return None
        if answer in OUTCOME:
            await _history(conn, message_id, "transition", to=OUTCOME[answer], by=f"check-back ({me})")
            return OUTCOME[answer]
        if row.state == State.PARKED:
            await _history(conn, message_id, "transition", to=State.PARKED, by=me, checks=row.checks)
        return State(row.state)


@dataclass(frozen=True)
class Due:
    """A COMMITTED message claimed for delivery: its body as PostgreSQL prints the JSONB, published as it is."""

    id: uuid.UUID
    topic: str
    body: str
    message_id: str | None  # an envelope's own id (consumers dedupe on it), its trace and its order
    traceparent: str | None
    order_id: str | None
    attempts: int  # delivery attempts RabbitMQ refused so far


_CLAIM_DELIVERIES = (
    "UPDATE half_messages SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2) "
    "WHERE id IN (SELECT id FROM half_messages WHERE state = 'COMMITTED' AND next_delivery_at <= now() "
    "AND (claimed_until IS NULL OR claimed_until < now()) ORDER BY next_delivery_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, topic, CAST(body AS text), body->>'message_id', body->>'traceparent', body->>'order_id', "
    "delivery_attempts")
# A batch marked DELIVERED, with each message's two history rows (the delivery, then the transition), in one
# statement
_DELIVERED = (
    "WITH d AS (UPDATE half_messages SET state = 'DELIVERED', updated_at = now(), claimed_by = NULL, "
    "claimed_until = NULL, last_error = NULL, next_delivery_at = NULL "
    "WHERE id = ANY($1::uuid[]) AND state = 'COMMITTED' AND claimed_by = $2 RETURNING id) "
    "INSERT INTO half_message_history (message_id, kind, detail) "
    "SELECT d.id, e.kind, e.detail FROM d CROSS JOIN (VALUES (1, 'delivery', $3::text::jsonb), "
    "(2, 'transition', $4::text::jsonb)) AS e(n, kind, detail) ORDER BY d.id, e.n "
    "RETURNING message_id")


async def claim_deliveries(engine: AsyncEngine, me: str, lease_seconds: float, limit: int) -> list[Due]:
    rows = await fetch_alone(engine, _CLAIM_DELIVERIES, me, float(lease_seconds), limit)
    return [Due(*r) for r in rows]


async def delivered(engine: AsyncEngine, me: str, message_ids: list[uuid.UUID]) -> int:
    """Mark the messages this process claimed and published DELIVERED; return how many were (a message whose
    claim ran out and went to another process meanwhile is left to it)."""
    rows = await fetch_alone(engine, _DELIVERED, message_ids, me, _detail(ok=True, by=me),
                             _detail(to=State.DELIVERED, by=me))
    return len(rows) // 2


async def delivery_failed(engine: AsyncEngine, me: str, message_id: uuid.UUID, error: str, retry_in: float,
                          counted: bool) -> None:
    """Give back a claimed delivery to retry later; `counted` when RabbitMQ refused the message itself."""
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "UPDATE half_messages SET claimed_by = NULL, claimed_until = NULL, last_error = :error, "
            "delivery_attempts = delivery_attempts + :counted, "
            "next_delivery_at = now() + make_interval(secs => :retry) "
            "WHERE id = :id AND state = 'COMMITTED' AND claimed_by = :me"),
            {"id": message_id, "me": me, "error": error, "counted": int(counted), "retry": retry_in})
        await _history(conn, message_id, "delivery", ok=False, error=error, counted=counted, by=me)


async def release_own(engine: AsyncEngine, me: str) -> int:
    """Give back what an earlier run of this same process had claimed (it died holding it)."""
    async with engine.begin() as conn:
        result = await conn.execute(sa.text(
            "UPDATE half_messages SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = :me"), {"me": me})
    return result.rowcount


_FIELDS = ("id, topic, body, producer, check_url, state, created_at, updated_at, checks, next_check_at, "
           "delivery_attempts, next_delivery_at, last_error")


def _view(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
    if out["state"] not in UNDECIDED:
        out["next_check_at"] = None
    return out


async def get(engine: AsyncEngine, message_id: uuid.UUID) -> dict[str, Any]:
    """The message and its history: every transition, check-back and delivery attempt, with times."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(f"SELECT {_FIELDS} FROM half_messages WHERE id = :id"),
                                  {"id": message_id})).first()
        if row is None:
            raise NotFound(str(message_id))
        history = (await conn.execute(sa.text(
            "SELECT at, kind, detail FROM half_message_history WHERE message_id = :id ORDER BY seq"),
            {"id": message_id})).all()
    return {**_view(row), "history": [{"at": h.at.isoformat(), "kind": h.kind, **h.detail} for h in history]}


async def page(engine: AsyncEngine, state: State | None, limit: int, offset: int) -> dict[str, Any]:
    where = "WHERE state = :state" if state is not None else ""
    args = {"state": state.value if state else None, "limit": limit, "offset": offset}
    async with engine.connect() as conn:
        total = (await conn.execute(sa.text(f"SELECT count(*) FROM half_messages {where}"), args)).scalar_one()
        rows = (await conn.execute(sa.text(
            f"SELECT {_FIELDS} FROM half_messages {where} ORDER BY created_at, id LIMIT :limit OFFSET :offset"),
            args)).all()
    items = [_view(r) for r in rows]
    following = offset + len(items)
    return {"items": items, "total": total, "offset": offset,
            "next_offset": following if following < total else None}


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT state, count(*) AS n FROM half_messages GROUP BY state"))).all()
    return {s.value: 0 for s in State} | {r.state: r.n for r in rows}
