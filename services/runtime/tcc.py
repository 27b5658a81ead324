"""TCC participants: Try / Confirm / Cancel behind a barrier, the way DTM's barrier works.

Each participant database has one table `tcc_barrier` with the unique key (gid, branch, op). Every step
inserts its own row first, in the same local transaction as its business effect, and the key decides:

- **Idempotency:** a step whose row exists already ran; it does nothing and answers what it answered then.
- **Empty rollback:** a Cancel also inserts the Try's row. If that insert succeeds the Try never ran, so
  there is nothing to undo: the Cancel succeeds and records that it was empty.
- **Anti-hanging:** that same row makes a Try arriving after its Cancel find its key taken: it reserves
  or freezes nothing.
- **Concurrent Try and Cancel** meet on the Try's key: whichever inserts first wins, the other waits for
  its transaction and then sees its row. No timing is involved.

A participant supplies the three business effects (`Effects`); this module owns the barrier and the answers.
Answers: 200 `{"outcome": ...}` for every business outcome (a refused Try, a Try skipped by the barrier, an
empty rollback included); 409 with the reason for a Confirm whose Try never succeeded, or a Cancel after a
Confirm. A Try's answer also says whether it holds what Confirm needs (`"ready"`), a repeated one included.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import require_token
from services.common.db import Queries, Sql, transaction
from services.common.tracing import about
from services.runtime.state import runtime

TRY, CONFIRM, CANCEL = "try", "confirm", "cancel"
PREVENTED = "PREVENTED"  # the Try's row written by a Cancel that came first: that Try will never run
CONFIRMED, CANCELLED, EMPTY_ROLLBACK, NOTHING_TO_UNDO = "CONFIRMED", "CANCELLED", "EMPTY_ROLLBACK", "NOTHING_TO_UNDO"


class Branch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gid: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    branch: str = Field(pattern=r"^(inventory|payment)$")
    # the coordinator's phase-1 deadline (epoch seconds): a prepare waits for a row lock at most until then
    deadline: float | None = Field(None, gt=0, allow_inf_nan=False)


@dataclass(frozen=True)
class Tried:
    """What a Try did: `held` when it reserved or froze something that Confirm or Cancel must settle."""

    outcome: str
    held: bool
    detail: dict[str, Any]


@dataclass(frozen=True)
class Effects:
    """A participant's business effects, each run inside the barrier's transaction. They are written once, with
    asyncpg's `$1` parameters, and run on asyncpg for TCC and on psycopg in a prepared transaction (2PC, 3PC)."""

    try_: Callable[[Queries, Any], Awaitable[Tried]]
    confirm: Callable[[Queries, dict[str, Any]], Awaitable[None]]
    cancel: Callable[[Queries, dict[str, Any]], Awaitable[None]]


ANSWER_LOST_SECONDS = 20.0  # how long a `drop` fault holds an answer back: past any caller's patience


async def lose_answer(point: str) -> NoReturn:
    """A `drop` fault on a participant's step: the work is done, and its answer never reaches the caller."""
    await asyncio.sleep(ANSWER_LOST_SECONDS)
    raise HTTPException(504, f"{point}: the answer was dropped by a fault")


class Refused(Exception):
    """A step that cannot be taken (409): nothing was written."""


@dataclass(frozen=True)
class Step:
    """A barrier row: what a step answered, whether its Try holds something, and what Confirm or Cancel needs."""

    outcome: str
    held: bool
    detail: dict[str, Any]


async def _claim(db: Sql, gid: str, branch: str, op: str, outcome: str) -> bool:
    """Insert the step's barrier row; False when it exists (waiting first for a transaction inserting it)."""
    return await db.fetchval(
        "INSERT INTO tcc_barrier (gid, branch, op, outcome) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (gid, branch, op) DO NOTHING RETURNING true", gid, branch, op, outcome) is not None


async def _read(db: Sql, gid: str, branch: str, op: str) -> Step | None:
    rows = await db.fetch("SELECT outcome, held, CAST(detail AS text) FROM tcc_barrier "
                          "WHERE gid = $1 AND branch = $2 AND op = $3", gid, branch, op)
    if not rows:
        return None
    outcome, held, detail = rows[0]
    return Step(outcome, held, json.loads(detail) if detail else {})


async def _record(db: Sql, gid: str, branch: str, op: str, outcome: str, held: bool = False,
                  detail: dict[str, Any] | None = None) -> None:
    await db.execute("UPDATE tcc_barrier SET outcome = $4, held = $5, detail = CAST($6 AS jsonb) "
                     "WHERE gid = $1 AND branch = $2 AND op = $3", gid, branch, op, outcome, held,
                     json.dumps(detail or {}))


async def try_step(db: Sql, body: Branch, effects: Effects) -> dict[str, Any]:
    if not await _claim(db, body.gid, body.branch, TRY, "RUNNING"):
        row = await _read(db, body.gid, body.branch, TRY)
        assert row is not None
        if row.outcome == PREVENTED:
            return {"outcome": "SKIPPED", "ready": False,
                    "why": "its Cancel came first: this Try reserves nothing (anti-hanging)"}
        return {"outcome": row.outcome, "ready": row.held, "repeated": True}
    savepoint = db.savepoint()
    await savepoint.start()
    tried = await effects.try_(db, body)
    if tried.held:
        await savepoint.commit()
    else:
        await savepoint.rollback()  # a refused Try leaves no effect, only its barrier row
    await _record(db, body.gid, body.branch, TRY, tried.outcome, tried.held, tried.detail)
    return {"outcome": tried.outcome, "ready": tried.held,
            **({"why": tried.detail["why"]} if "why" in tried.detail else {})}


async def confirm_step(db: Sql, body: Branch, effects: Effects) -> dict[str, Any]:
    tried = await _read(db, body.gid, body.branch, TRY)
    if tried is None or not tried.held:
        what = "never arrived" if tried is None else f"ended {tried.outcome}"
        raise Refused(f"cannot confirm branch {body.branch} of {body.gid}: its Try {what}")
    if await _read(db, body.gid, body.branch, CANCEL) is not None:
        raise Refused(f"cannot confirm branch {body.branch} of {body.gid}: it was cancelled")
    if not await _claim(db, body.gid, body.branch, CONFIRM, CONFIRMED):
        return {"outcome": CONFIRMED, "repeated": True}
    await effects.confirm(db, tried.detail)
    return {"outcome": CONFIRMED}


async def cancel_step(db: Sql, body: Branch, effects: Effects) -> dict[str, Any]:
    if await _read(db, body.gid, body.branch, CONFIRM) is not None:
        raise Refused(f"cannot cancel branch {body.branch} of {body.gid}: it was confirmed")
    if not await _claim(db, body.gid, body.branch, CANCEL, CANCELLED):
        row = await _read(db, body.gid, body.branch, CANCEL)
        assert row is not None
        return {"outcome": row.outcome, "repeated": True}
    if await _claim(db, body.gid, body.branch, TRY, PREVENTED):
        await _record(db, body.gid, body.branch, CANCEL, EMPTY_ROLLBACK)
        return {"outcome": EMPTY_ROLLBACK}
    tried = await _read(db, body.gid, body.branch, TRY)
    assert tried is not None
    if not tried.held:
        await _record(db, body.gid, body.branch, CANCEL, NOTHING_TO_UNDO)
        return {"outcome": NOTHING_TO_UNDO}
    await effects.cancel(db, tried.detail)
    return {"outcome": CANCELLED}


def tcc_router(service: str, try_body: type[Branch], effects: Effects) -> APIRouter:
    """`POST /internal/tcc/try|confirm|cancel` for one participant, each step in one local transaction."""
    r = APIRouter(prefix="/internal/tcc", dependencies=[Depends(require_token)], include_in_schema=False)

    async def run(request: Request, op: str, step: Callable[..., Awaitable[dict[str, Any]]],
                  body: Branch) -> dict[str, Any]:
        rt = runtime(request)
        with about(gid=body.gid, order_id=body.gid):  # a transaction's gid is its order's id
            action = await rt.faults.hit(f"{service}.tcc.{op}")
            try:
                async with transaction(rt.engine) as db:
                    answer = await step(db, body, effects)
            except Refused as exc:
                raise HTTPException(409, str(exc)) from None
            if action == "drop":
                await lose_answer(f"{service}.tcc.{op}")
            return answer

    # (this module does not postpone annotations: FastAPI reads `try_body` here, a local, as the body's type)
    @r.post("/try")
    async def tcc_try(body: try_body, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        return await run(request, TRY, try_step, body)

    @r.post("/confirm")
    async def tcc_confirm(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, CONFIRM, confirm_step, body)

    @r.post("/cancel")
    async def tcc_cancel(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, CANCEL, cancel_step, body)

    return r
