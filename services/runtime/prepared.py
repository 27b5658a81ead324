"""2PC and 3PC participants: the work of a branch held in a PostgreSQL prepared transaction.

A branch's prepared transaction is named `txlab:<gid>:<branch>`; `PREPARE TRANSACTION` ends it (see `Pools`),
and psycopg's two-phase API (`tpc_commit`, `tpc_rollback`, `tpc_recover`), which SQLAlchemy's asyncio layer and
asyncpg lack, finishes it. The business effects are the TCC participant's own (`Effects`): the work of Try and of
Confirm, run in one transaction and prepared, so that COMMIT PREPARED makes it final and ROLLBACK PREPARED
leaves no trace. The barrier table remembers what happened once the prepared transaction is gone:

- **2PC** (`/internal/xa/prepare|commit|rollback`): the prepare writes the row `(gid, branch, 'xa', COMMITTED)`
  inside the prepared transaction, so it exists exactly when the branch committed. A rollback leaves the row
  ROLLED_BACK, which also bars a prepare arriving after it (it does nothing). Every call repeated, or late,
  answers with the branch's outcome; a commit of a branch that never prepared is 409.
- **3PC** (`/internal/3pc/can-commit|pre-commit|do-commit|abort`): can-commit checks the work can be done,
  taking no lock, and records the vote; pre-commit does the work and prepares it; do-commit commits it; abort
  rolls it back. The participant's own timeouts are 3PC's: a branch that voted yes and heard nothing more
  for `TXLAB_3PC_TIMEOUT_SECONDS` aborts, and a pre-committed one **commits on its own**, which is how 3PC
  stays live without its coordinator, and how a partition makes it inconsistent.

A prepared branch holds its row locks until its decision, so a prepare must not queue behind them for long:
one that arrives after its phase-1 deadline (sent by the coordinator) does nothing, and one waits at most
`MAX_LOCK_WAIT` for a row another branch holds, then answers BUSY (the order is aborted, not the system).

Nothing of ours stays prepared: `resolve_prepared` runs in each participant. It applies the 3PC timeouts,
and asks the coordinator about every other prepared transaction of ours older than `TXLAB_INDOUBT_SECONDS`
(the in-doubt sweep): it commits or rolls back as the decision says, rolls back one whose gid the coordinator
never heard of, and leaves an undecided one to its coordinator. A prepared transaction whose name lacks the
`txlab:` prefix belongs to someone else and is never touched.
"""

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request
from psycopg import Xid, errors, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.auth import require_token
from services.common.settings import Settings
from services.common.tracing import about, statement_span
from services.coordinator.client import CoordinatorClient, CoordinatorUnavailable
from services.coordinator.model import BRANCHES
from services.runtime.state import Runtime, runtime
from services.runtime.tcc import Branch, Effects, lose_answer

log = logging.getLogger("txlab.prepared")

PREFIX = "txlab:"
XA, THREE_PC = "xa", "3pc"  # the barrier's op for each protocol
PREPARED, COMMITTED, ROLLED_BACK, SKIPPED = "PREPARED", "COMMITTED", "ROLLED_BACK", "SKIPPED"
VOTED_YES, VOTED_NO, ABORTED = "VOTED_YES", "VOTED_NO", "ABORTED"
ABORTED_ON_TIMEOUT, COMMITTED_ON_TIMEOUT = "ABORTED_ON_TIMEOUT", "COMMITTED_ON_TIMEOUT"
MAX_LOCK_WAIT = 1.0  # seconds a prepare waits for a row lock, at most
SHORT_LOCK_WAIT = "50ms"  # a barrier row another call of the same branch holds: answered at once, not waited for


def xid_name(gid: str, branch: str) -> str:
    return f"{PREFIX}{gid}:{branch}"


def parse_xid(name: str) -> tuple[str, str] | None:
    """(gid, branch) of one of our prepared transactions; None for any other name."""
    if not name.startswith(PREFIX):
        return None
    gid, _, branch = name[len(PREFIX):].rpartition(":")
    return (gid, branch) if gid and branch in BRANCHES else None


def ours(xid: Xid, database: str) -> tuple[str, str] | None:
    """(gid, branch) when a prepared transaction (from `tpc_recover`) is one of ours in `database`."""
    return parse_xid(xid.gtrid) if xid.format_id is None and xid.database == database else None


class Refused(Exception):
    """A call that cannot be honoured (409), e.g. a commit of a branch that never prepared."""


class Busy(Exception):
    """A call that met a prepare in progress on the same branch (503: retry)."""


# ----------------------------------------------------------------------------------------------- SQL
_PARAMETER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=256)
def _for_psycopg(query: str) -> tuple[str, tuple[int, ...]]:
    """asyncpg's `$n` parameters as psycopg's `%s`, and which argument each one takes."""
    taken: list[int] = []

    def placeholder(match: re.Match[str]) -> str:
        taken.append(int(match.group(1)) - 1)
        return "%s"

    return _PARAMETER.sub(placeholder, query.replace("%", "%%")), tuple(taken)


class PreparedQueries:
    """A participant's effects, written with asyncpg's `$1` parameters for TCC, run unchanged on the psycopg
    connection of a prepared transaction (`services.common.db.Queries`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        text, taken = _for_psycopg(query)
        with statement_span(query):
            cursor = await self.conn.execute(text, [args[i] for i in taken])
            return await cursor.fetchall() if cursor.description else []

    async def fetchval(self, query: str, *args: Any) -> Any:
        rows = await self.fetch(query, *args)
        return rows[0][0] if rows else None

    async def execute(self, query: str, *args: Any) -> None:
        await self.fetch(query, *args)


# what a 3PC can-commit checks: None when the work can be done, else why not
CanDo = Callable[[PreparedQueries, Any], Awaitable[str | None]]


@dataclass
class Pools:
    """A participant's psycopg connections, autocommit between transactions (COMMIT PREPARED needs it), in two
    pools. `prepares` holds the connections a prepare works on (at most `PREPARES` at once); `pool` serves the
    rest (votes, commits, rollbacks, the sweep), a few short statements each, never waiting on a row lock for
    long. Two pools, so that prepares waiting on the locks of another branch's prepared transaction never hold a
    connection that the COMMIT PREPARED releasing them needs.

    A prepare ends its transaction with `PREPARE TRANSACTION` sent as SQL, not with psycopg's `tpc_prepare`
    (after which psycopg runs nothing more on that connection until it commits, and the commit comes on another
    one), so its connection goes back to its pool. A connection opened per prepare cost two PostgreSQL processes
    per 2pc order: 3,059 connections for 1,500 orders at 32 in flight."""

    pool: AsyncConnectionPool
    prepares: AsyncConnectionPool

    async def open(self) -> None:
        await self.pool.open()
        await self.prepares.open()

    async def close(self) -> None:
        await self.prepares.close()
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def prepare_connection(self, deadline: float) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for one prepare, once one is free before `deadline` (else TimeoutError)."""
        try:
            conn = await self.prepares.getconn(timeout=max(0.0, deadline - time.time()))
        except PoolTimeout as exc:
            raise TimeoutError(str(exc)) from None
        try:
            yield conn
        except Exception:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")  # an unprepared transaction leaves nothing
            raise
        finally:
            await self.prepares.putconn(conn)  # the pool rolls back (or closes) one still in a transaction


PREPARES = 10  # prepares at once in a participant


def make_pools(settings: Settings, service: str, size: int = 6) -> Pools:
    def pool(name: str, max_size: int) -> AsyncConnectionPool:
        return AsyncConnectionPool(settings.raw_dsn(service), min_size=1, max_size=max_size, open=False, timeout=10.0,
                                   name=f"{service}-{name}", kwargs={"autocommit": True, "row_factory": namedtuple_row})

    return Pools(pool("prepared", size), pool("prepares", PREPARES))


# ------------------------------------------------------------------------------------ one participant
async def _state(conn: psycopg.AsyncConnection[Any], gid: str, branch: str, protocol: str) -> tuple[str | None, bool]:
    """The branch's barrier outcome (None: no row) and whether its prepared transaction exists."""
    cursor = await conn.execute(
        "SELECT (SELECT outcome FROM tcc_barrier WHERE gid = %s AND branch = %s AND op = %s) AS outcome, "
        "EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = %s AND database = current_database()) AS prepared",
        (gid, branch, protocol, xid_name(gid, branch)))
    row = await cursor.fetchone()
    return row.outcome, row.prepared


async def prepare(pools: Pools, body: Branch, effects: Effects, protocol: str, deadline: float) -> dict[str, Any]:
    """2PC prepare, 3PC pre-commit: do the work (Try's, then Confirm's) and PREPARE TRANSACTION. The work waits
    for a row lock at most until the phase-1 `deadline` (epoch seconds): after it the coordinator aborts."""
    name = xid_name(body.gid, body.branch)
    # past the deadline the coordinator aborts: a prepare that arrives (or waited for a slot) until then does
    # nothing, rather than take locks that others would queue behind (under a failover the queue never drained)
    late = {"outcome": "LATE", "ready": False, "why": "arrived after the phase-1 deadline: nothing done"}
    if time.time() >= deadline:
        return late
    try:
        async with pools.prepare_connection(deadline) as conn:
            return await _prepare(conn, name, body, effects, protocol, deadline)
    except TimeoutError:
        return late


async def _prepare(conn: psycopg.AsyncConnection[Any], name: str, body: Branch, effects: Effects, protocol: str,
                   deadline: float) -> dict[str, Any]:
    outcome, prepared = await _state(conn, body.gid, body.branch, protocol)
    if prepared:
        return {"outcome": PREPARED, "ready": True, "repeated": True}
    if outcome is not None and outcome.startswith(COMMITTED):
        return {"outcome": outcome, "ready": True, "repeated": True}
    if protocol == XA and outcome is not None:
        return {"outcome": SKIPPED, "ready": False, "why": "rolled back before this prepare arrived"}
    if protocol == THREE_PC and outcome != VOTED_YES:
        why = "no can-commit vote" if outcome is None else f"its vote is {outcome}"
        return {"outcome": SKIPPED, "ready": False, "why": f"{why}: this pre-commit does nothing"}
    await conn.execute("BEGIN")  # the connection is in autocommit: this transaction ends prepared or rolled back
    try:
        claimed = await _claim_branch(conn, body, protocol)
    except errors.LockNotAvailable:  # the same branch's other call holds the row: it runs, or prepared
        await conn.execute("ROLLBACK")
        if (await _state(conn, body.gid, body.branch, protocol))[1]:
            return {"outcome": PREPARED, "ready": True, "repeated": True}
        raise Busy(f"another call of branch {body.branch} of {body.gid} is in progress; retry") from None
    if not claimed:
        await conn.execute("ROLLBACK")
        return {"outcome": SKIPPED, "ready": False, "why": "aborted while this call was on its way"}
    # a row another branch holds prepared is waited for a little, not until the deadline: a queue of prepares
    # waiting on hot rows (each holding its own) outlives an outage by many seconds
    wait = max(0.05, min(deadline - time.time(), MAX_LOCK_WAIT))
    await conn.execute(f"SET LOCAL lock_timeout = '{int(wait * 1000)}ms'")
    queries = PreparedQueries(conn)
    try:
        tried = await effects.try_(queries, body)
    except errors.LockNotAvailable:
        await conn.execute("ROLLBACK")
        return {"outcome": "BUSY", "ready": False,
                "why": f"waited {wait:.1f}s for a row another transaction holds"}
    if not tried.held:
        await conn.execute("ROLLBACK")  # not prepared: nothing of it remains
        return {"outcome": tried.outcome, "ready": False,
                **({"why": tried.detail["why"]} if "why" in tried.detail else {})}
    await effects.confirm(queries, tried.detail)
    with statement_span(f"PREPARE TRANSACTION '{name}'"):
        await conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(name)))
    return {"outcome": PREPARED, "ready": True}


async def _claim_branch(conn: psycopg.AsyncConnection[Any], body: Branch, protocol: str) -> bool:
    """The branch's barrier row, in the prepared transaction: False when an abort or a timeout came first."""
    await conn.execute(f"SET LOCAL lock_timeout = '{SHORT_LOCK_WAIT}'")
    if protocol == XA:  # the row exists once committed; a rollback's row bars this prepare
        cursor = await conn.execute(
            "INSERT INTO tcc_barrier (gid, branch, op, outcome) VALUES (%s, %s, 'xa', %s) "
            "ON CONFLICT (gid, branch, op) DO NOTHING RETURNING 1", (body.gid, body.branch, COMMITTED))
    else:  # the vote becomes COMMITTED once committed
        cursor = await conn.execute(
            "UPDATE tcc_barrier SET outcome = %s, at = now() WHERE gid = %s AND branch = %s AND op = '3pc' "
            "AND outcome = %s RETURNING 1", (COMMITTED, body.gid, body.branch, VOTED_YES))
    return await cursor.fetchone() is not None


async def commit(pool: AsyncConnectionPool, gid: str, branch: str, protocol: str) -> dict[str, Any]:
    """2PC commit, 3PC do-commit: COMMIT PREPARED; repeated, it answers COMMITTED."""
    async with pool.connection() as conn:
        try:
            with statement_span(f"COMMIT PREPARED '{xid_name(gid, branch)}'"):
                await conn.tpc_commit(xid_name(gid, branch))
            return {"outcome": COMMITTED}
        except errors.UndefinedObject:  # no such prepared transaction: it ended already, or never was
            pass
        outcome, _ = await _state(conn, gid, branch, protocol)
    if outcome is not None and outcome.startswith(COMMITTED):
        return {"outcome": outcome, "repeated": True}
    raise Refused(f"cannot commit branch {branch} of {gid}: " +
                  ("it never prepared" if outcome in (None, VOTED_YES) else f"it is {outcome}"))


async def rollback(pool: AsyncConnectionPool, gid: str, branch: str, protocol: str) -> dict[str, Any]:
    """2PC rollback, 3PC abort: ROLLBACK PREPARED, and a barrier row that makes a late prepare do nothing.
    A branch that committed already (a 3PC one on its own) answers with that outcome."""
    async with pool.connection() as conn:
        try:
            with statement_span(f"ROLLBACK PREPARED '{xid_name(gid, branch)}'"):
                await conn.tpc_rollback(xid_name(gid, branch))
            rolled = True
        except errors.UndefinedObject:
            rolled = False
        outcome, _ = await _state(conn, gid, branch, protocol)
        if outcome is not None and outcome.startswith(COMMITTED):
            return {"outcome": outcome, "committed": True}
        mark = ROLLED_BACK if protocol == XA else ABORTED
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{SHORT_LOCK_WAIT}'")
                await conn.execute(
                    "INSERT INTO tcc_barrier (gid, branch, op, outcome) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (gid, branch, op) DO UPDATE SET outcome = EXCLUDED.outcome, at = now() "
                    "WHERE tcc_barrier.outcome IN (%s, %s)", (gid, branch, protocol, mark, VOTED_YES, VOTED_NO))
        except errors.LockNotAvailable:
            raise Busy(f"a {'prepare' if protocol == XA else 'pre-commit'} of branch {branch} of {gid} is in "
                       "progress; retry") from None
        outcome, _ = await _state(conn, gid, branch, protocol)
    return {"outcome": outcome or mark, **({} if rolled else {"nothing_prepared": True})}


async def can_commit(pool: AsyncConnectionPool, body: Branch, check: CanDo) -> dict[str, Any]:
    """3PC can-commit: whether the work can be done, read without a lock, and the vote recorded."""
    async with pool.connection() as conn:
        outcome, _ = await _state(conn, body.gid, body.branch, THREE_PC)
        if outcome is None:
            why = await check(PreparedQueries(conn), body)
            vote = VOTED_NO if why else VOTED_YES
            cursor = await conn.execute(
                "INSERT INTO tcc_barrier (gid, branch, op, outcome) VALUES (%s, %s, '3pc', %s) "
                "ON CONFLICT (gid, branch, op) DO NOTHING RETURNING 1", (body.gid, body.branch, vote))
            if await cursor.fetchone() is not None:
                return {"outcome": vote, "ready": not why, **({"why": why} if why else {})}
            outcome, _ = await _state(conn, body.gid, body.branch, THREE_PC)
        ready = outcome == VOTED_YES or (outcome or "").startswith(COMMITTED)
        # a repeated "no" gives its reason again when it still holds (the first answer may have been lost)
        why = None if ready else (outcome == VOTED_NO and await check(PreparedQueries(conn), body)) or (
            f"this branch is {outcome}")
    return {"outcome": outcome, "ready": ready, "repeated": True, **({"why": why} if why else {})}


# ------------------------------------------------------------------------------------------ routes
def prepared_router(service: str, try_body: type[Branch], effects: Effects, check: CanDo) -> APIRouter:
    """`POST /internal/xa/prepare|commit|rollback` and `/internal/3pc/can-commit|pre-commit|do-commit|abort`.
    (This module does not postpone annotations: FastAPI reads `try_body`, a local, as the bodies' type.)"""
    r = APIRouter(prefix="/internal", dependencies=[Depends(require_token)], include_in_schema=False)

    async def run(request: Request, gid: str, point: str, call: Callable[[Pools], Awaitable[dict[str, Any]]],
                  answer_first: bool = False) -> dict[str, Any]:
        """Run `call` behind its fault point: hit before it, or, for a prepare, after it (a crash then leaves
        the branch prepared and unanswered; `drop` holds its answer back)."""
        rt = runtime(request)
        with about(gid=gid, order_id=gid):  # a transaction's gid is its order's id
            action = None if answer_first else await rt.faults.hit(point)
            try:
                answer = await call(rt.pg)
            except Refused as exc:
                raise HTTPException(409, str(exc)) from None
            except Busy as exc:
                raise HTTPException(503, str(exc)) from None
            if answer_first:
                action = await rt.faults.hit(point)
            if action == "drop":
                await lose_answer(point)
            return answer

    def deadline(request: Request, body: Branch) -> float:
        """The phase-1 deadline the coordinator sent, else the settings' phase-1 length from now."""
        return body.deadline or time.time() + runtime(request).settings.tcc_deadline_seconds

    @r.post("/xa/prepare")
    async def xa_prepare(body: try_body, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        return await run(request, body.gid, f"{service}.xa.prepare",
                         lambda pg: prepare(pg, body, effects, XA, deadline(request, body)), answer_first=True)

    @r.post("/xa/commit")
    async def xa_commit(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, body.gid, f"{service}.xa.commit",
                         lambda pg: commit(pg.pool, body.gid, body.branch, XA))

    @r.post("/xa/rollback")
    async def xa_rollback(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, body.gid, f"{service}.xa.rollback",
                         lambda pg: rollback(pg.pool, body.gid, body.branch, XA))

    @r.post("/3pc/can-commit")
    async def three_can_commit(body: try_body, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        return await run(request, body.gid, f"{service}.3pc.can_commit", lambda pg: can_commit(pg.pool, body, check))

    @r.post("/3pc/pre-commit")
    async def three_pre_commit(body: try_body, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        return await run(request, body.gid, f"{service}.3pc.pre_commit",
                         lambda pg: prepare(pg, body, effects, THREE_PC, deadline(request, body)),
                         answer_first=True)

    @r.post("/3pc/do-commit")
    async def three_do_commit(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, body.gid, f"{service}.3pc.do_commit",
                         lambda pg: commit(pg.pool, body.gid, body.branch, THREE_PC))

    @r.post("/3pc/abort")
    async def three_abort(body: Branch, request: Request) -> dict[str, Any]:
        return await run(request, body.gid, f"{service}.3pc.abort",
                         lambda pg: rollback(pg.pool, body.gid, body.branch, THREE_PC))

    return r


# ------------------------------------------------------------------------------- nothing left prepared
async def resolve_prepared(rt: Runtime, every: float = 0.5) -> None:
    """The participant's background loop: 3PC's timeouts, then the 2PC in-doubt sweep (module docstring)."""
    while True:
        await asyncio.sleep(every)
        try:
            found = await prepared_ours(rt.pg.pool)
            await threepc_timeouts(rt.pg.pool, found, rt.settings.threepc_timeout_seconds)
            await sweep_in_doubt(rt.pg.pool, found, rt.settings, rt.http)
        except (psycopg.Error, OSError, PoolTimeout) as exc:
            log.warning("resolving prepared transactions: %s", exc)
        except Exception:  # this loop must outlive any one surprise: nothing of ours may stay prepared
            log.exception("resolving prepared transactions")


Found = list[tuple[str, str, float]]  # (gid, branch, seconds since it was prepared)


async def prepared_ours(pool: AsyncConnectionPool) -> Found:
    """Our prepared transactions in this database, with their ages."""
    async with pool.connection() as conn:
        database = conn.info.dbname  # known to the connection: no query in a loop that runs twice a second
        xids = await conn.tpc_recover()
    now = datetime.now(UTC)
    return [(*found, (now - xid.prepared).total_seconds()) for xid in xids
            if xid.prepared is not None and (found := ours(xid, database)) is not None]


async def threepc_timeouts(pool: AsyncConnectionPool, found: Found, timeout: float) -> None:
    async with pool.connection() as conn:
        # voted yes and heard nothing more: abort (nothing is held; a pre-commit arriving later does nothing).
        # A vote whose pre-commit is running, or prepared, is locked by it and skipped.
        cursor = await conn.execute(
            "UPDATE tcc_barrier SET outcome = %s, at = now() WHERE (gid, branch, op) IN (SELECT gid, branch, op "
            "FROM tcc_barrier WHERE op = '3pc' AND outcome = %s AND at < now() - make_interval(secs => %s) "
            "FOR UPDATE SKIP LOCKED) RETURNING gid, branch", (ABORTED_ON_TIMEOUT, VOTED_YES, timeout))
        for row in await cursor.fetchall():
            log.warning("3pc %s/%s: voted yes and heard nothing for %gs: aborted", row.gid, row.branch, timeout)
    for gid, branch, age in found:
        if age < timeout or not await _is_3pc(pool, gid, branch):
            continue  # a 2PC branch: the sweep's
        async with pool.connection() as conn:
            try:
                await conn.tpc_commit(xid_name(gid, branch))
            except (errors.UndefinedObject, errors.ObjectInUse):
                continue  # its do-commit or abort came meanwhile, or is running
            await conn.execute("UPDATE tcc_barrier SET outcome = %s, at = now() WHERE gid = %s AND branch = %s "
                               "AND op = '3pc'", (COMMITTED_ON_TIMEOUT, gid, branch))
        log.warning("3pc %s/%s: pre-committed and heard nothing for %gs: committed on its own", gid, branch, timeout)


async def sweep_in_doubt(pool: AsyncConnectionPool, found: Found, settings: Settings,
                         http: httpx.AsyncClient) -> None:
    client = CoordinatorClient(settings, http, deadline=3.0)
    for gid, branch, age in found:
        if age < settings.indoubt_seconds or await _is_3pc(pool, gid, branch):
            continue  # 3PC's own timeouts end it
        try:
            response = await client.request("GET", f"/transactions/{gid}")
        except CoordinatorUnavailable as exc:
            log.warning("in doubt %s/%s: %s", gid, branch, exc)
            return
        if response.status_code == 404:
            decision = "abort"  # the coordinator never heard of it: nobody will ever commit it
        elif response.status_code == 200:
            decision = response.json().get("decision")
        else:
            continue
        if decision not in ("commit", "abort"):
            continue  # not decided yet: its coordinator will
        try:
            done = await (commit if decision == "commit" else rollback)(pool, gid, branch, XA)
        except (Busy, Refused, psycopg.Error) as exc:  # being ended meanwhile, or not ours to end: next round
            log.warning("in doubt %s/%s: %s", gid, branch, exc)
            continue
        log.warning("in doubt %s/%s for over %gs: the coordinator says %s: %s", gid, branch,
                    settings.indoubt_seconds, decision, done["outcome"])


async def _is_3pc(pool: AsyncConnectionPool, gid: str, branch: str) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT 1 FROM tcc_barrier WHERE gid = %s AND branch = %s AND op = '3pc'",
                                    (gid, branch))
        return await cursor.fetchone() is not None
