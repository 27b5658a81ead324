"""The leader's work: drive every non-final transaction to its end, from the replicated records alone.

Only the replica that leads runs this. When it becomes leader it first catches up (everything committed
before its leadership is in its records), then resumes each non-final transaction where the records say it
is. Every call it makes can be made again safely: a participant's barrier answers a repeated Try, Confirm or
Cancel as it answered the first, and the order service's outcome route is idempotent. So a leader that dies
at any point leaves nothing the next one cannot finish.

Phase 1 calls every branch at once and waits at most until the deadline; a Try still unanswered then is not
cancelled (a held Try may reach its participant after the Cancel: the barrier's anti-hanging rule makes it
reserve nothing). Phase 2 retries each branch with capped exponential backoff and jitter; the record keeps
the attempts, the next attempt's time and the last error, and after `coordinator_max_attempts` failures the
transaction is STUCK until an operator retries it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from opentelemetry.trace import SpanKind, StatusCode

from services.common.faults import FaultInjector
from services.common.settings import Settings
from services.common.tracing import context_of, inject_headers, tracer
from services.coordinator.model import ABORT, COMMIT, PATTERNS, PENDING, REFUSED, STUCK, Pattern
from services.coordinator.store import NotLeader, OutcomeUnknown, Store

log = logging.getLogger("txlab.coordinator")

MAX_DEADLINE_SECONDS = 3600.0  # a transaction's deadline is at most this far ahead (POST /transactions refuses more)
LATE_ANSWER_SECONDS = 10.0  # how long after the deadline a phase-1 call is still waited for (not by the decision)


class CallFailed(Exception):
    """A participant or the order service could not be reached, or answered with an error (`refused`: a 4xx,
    which retrying at once would not change)."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class Driver:
    def __init__(self, store: Store, settings: Settings, faults: FaultInjector, http: aiohttp.ClientSession,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.settings = settings
        self.faults = faults
        self.http = http
        self.rng = rng or random.Random()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.leading_since: float | None = None  # when this replica last became a leader that caught up
        # when each participant last answered, and when each branch's last phase-2 attempt failed: a branch
        # waiting out its backoff is retried at once when its participant answers again (a 2PC branch holds
        # its row locks while it waits, and every order behind them would miss its deadline)
        self.answered: dict[str, float] = {}
        self.failed_at: dict[tuple[str, str], float] = {}
        self._headers = {"authorization": f"Bearer {settings.admin_token}"}
        self._interrupts: dict[str, asyncio.Event] = {}  # phase 1 waiting on its calls, by gid

    def interrupt(self, gid: str) -> None:
        """Stop waiting for `gid`'s phase-1 answers: an operator decided it (the decision is in the log)."""
        event = self._interrupts.get(gid)
        if event is not None:
            event.set()

    # --------------------------------------------------------------------------------------- the loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            term = self.store.leading
            if term is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await self.store.catch_up()
            except NotLeader:
                await asyncio.sleep(0.05)
                continue
            self.leading_since = time.time()
            log.info("leading (%d): resuming %d unfinished transactions", term, len(self.store.book.active))
            try:
                while self.store.leading == term:
                    await self.store.catch_up()  # a no-op while this leadership lasts; NotLeader once it ended
                    self._spawn_due()
                    self.wake.clear()
                    # at most 50 ms; a timer, as wait_for would make a task for each of these 20 waits a second
                    timer = loop.call_later(0.05, self.wake.set)
                    await self.wake.wait()
                    timer.cancel()
            except NotLeader:
                pass
            finally:
                self.leading_since = None
                for task in self.tasks.values():
                    task.cancel()
                self.tasks.clear()
                self.failed_at.clear()

    def _spawn_due(self) -> None:
        now = time.time()
        book = self.store.book
        for gid in list(book.active):
            if gid in self.tasks:
                continue
            record = book.get(gid)
            if record is not None and _due(record, now, self._retry_now):
                task = asyncio.create_task(self._drive(gid), name=f"drive-{gid}")
                self.tasks[gid] = task
                task.add_done_callback(lambda t, gid=gid: self._done(gid, t))

    def _done(self, gid: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(gid) is task:
            del self.tasks[gid]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (NotLeader, OutcomeUnknown)):
                log.error("driving %s failed", gid, exc_info=exc)
        self.wake.set()

    # ------------------------------------------------------------------------------- one transaction
    async def _drive(self, gid: str) -> None:
        record = self.store.book.get(gid)
        if record is None:
            return
        # a span of the order's trace (the begin request's), with the gid on every log line meanwhile
        with tracer.start_as_current_span(f"drive {record['pattern']}", context=context_of(record.get("traceparent")),
                                          attributes={"gid": gid, "order_id": gid, "state": record["state"]}), \
                structlog.contextvars.bound_contextvars(gid=gid):
            await self._drive_record(record)

    async def _drive_record(self, record: dict[str, Any]) -> None:
        gid = record["gid"]
        p = PATTERNS[record["pattern"]]
        while p.in_phase1(record["state"]):
            where = record["state"], record.get("round", 0)
            await self._phase1(record, p)
            record = self.store.book.get(gid) or record
            if (record["state"], record.get("round", 0)) == where:
                return  # an answer was not recorded (the store hiccuped): driven again
        if record["state"] in (p.committing, p.aborting):
            await self._phase2(record, p)

    async def _phase1(self, record: dict[str, Any], p: Pattern) -> None:
        """One round of phase 1; decides when the round is the last, or cannot go on."""
        gid, number = record["gid"], record.get("round", 0)
        op = p.rounds[number].op
        calls = [asyncio.create_task(self._try(gid, name, branch["body"], record["deadline"], p, number))
                 for name, branch in record["branches"].items()
                 if branch["state"] == PENDING and time.time() < record["deadline"]]
        for call in calls:  # they may outlive this leadership: their failures are only logged
            call.add_done_callback(_log_failure)
        if calls and await self._answered_or_interrupted(gid, set(calls), record["deadline"]):
            return  # an operator decided meanwhile: phase 2 follows
        record = self.store.book.get(gid) or record
        if record["state"] != p.rounds[number].state or record.get("round", 0) != number:
            return  # the next round began
        branches = record["branches"]
        refused = [f"{n}: {b['why'] or b['outcome']}" for n, b in branches.items() if b["state"] == REFUSED]
        unanswered = [n for n, b in branches.items() if b["state"] == PENDING]
        if unanswered and not refused and time.time() < record["deadline"]:
            return  # an answer was not recorded (the store hiccuped): driven again, still before the deadline
        await self.faults.hit(_point(p, f"after_{op}_all"))
        if refused:
            decision, reason = ABORT, "refused by " + "; ".join(refused)
        elif unanswered:
            decision, reason = ABORT, f"deadline passed before {', '.join(unanswered)} answered {op}"
        elif max(b["answered_at"] for b in branches.values()) > record["deadline"] or number < len(p.rounds) - 1:
            decision, reason = ABORT, f"deadline passed before every {op} succeeded"
        else:
            decision, reason = COMMIT, None
        await self.store.propose({"op": "decide", "gid": gid, "decision": decision, "reason": reason,
                                  "now": time.time()})
        await self.faults.hit(_point(p, "after_decision"))

    async def _answered_or_interrupted(self, gid: str, calls: set[asyncio.Task[None]], deadline: float) -> bool:
        """Wait for every call until the deadline, or for an operator's force-stop (True). The calls are not
        cancelled: a held call goes on, and the participant's barrier makes it harmless."""
        stop = self._interrupts.setdefault(gid, asyncio.Event())
        record = self.store.book.get(gid)
        if record is not None and record["decision"] is not None:  # decided before this wait began
            stop.set()
        stopper = asyncio.create_task(stop.wait())
        try:
            while calls and not stop.is_set() and (left := deadline - time.time()) > 0:
                done, _ = await asyncio.wait({*calls, stopper}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                calls -= done
        finally:
            stopper.cancel()
            self._interrupts.pop(gid, None)
        return stop.is_set()

    async def _try(self, gid: str, name: str, body: dict[str, Any], deadline: float, p: Pattern, number: int) -> None:
        """One branch's call in round `number` of phase 1, retried until it answers or the deadline passes."""
        op = p.rounds[number].op
        await self.faults.hit(_point(p, f"hold_{op}"))  # delay: the call reaches its participant late
        attempt = 0
        while True:
            try:
                # waited for past the deadline too: a late answer is kept on the branch's timeline
                answer = await self._call(name, op, {**body, "gid": gid, "branch": name, "deadline": deadline},
                                          timeout=min(max(0.0, deadline - time.time()), MAX_DEADLINE_SECONDS)
                                          + LATE_ANSWER_SECONDS)
            except CallFailed as exc:
                record = self.store.book.get(gid)
                if record is None or record["state"] != p.rounds[number].state or record.get("round", 0) != number:
                    return  # decided meanwhile: this failure is not phase 2's
                if exc.refused:  # a 4xx: the participant read the request and will never take it; asking again
                    # until the deadline would only delay the abort, and name the wrong cause
                    await self.store.propose({"op": "answered", "gid": gid, "branch": name, "round": number,
                                              "ok": False, "outcome": "REFUSED", "why": str(exc)[:300],
                                              "now": time.time()})
                    return
                attempt += 1
                pause = self._backoff(attempt)
                await self.store.propose({"op": "failed", "gid": gid, "branch": name, "error": str(exc),
                                          "next_at": time.time() + pause, "now": time.time()})
                await asyncio.sleep(min(pause, max(0.0, deadline - time.time())))
                if time.time() >= deadline:
                    return  # unanswered: the decision, at the deadline, is to abort
                continue
            await self.store.propose({"op": "answered", "gid": gid, "branch": name, "round": number,
                                      "ok": answer.get("ready") is True,
                                      "outcome": str(answer.get("outcome", "?"))[:100],
                                      "why": answer.get("why") if isinstance(answer.get("why"), str) else None,
                                      "now": time.time()})
            record = self.store.book.get(gid)
            if record is not None and record.get("round", 0) == number and sum(
                    b["answered_at"] is not None for b in record["branches"].values()) == 1:
                await self.faults.hit(_point(p, f"after_{op}_one"))
            return

    async def _phase2(self, record: dict[str, Any], p: Pattern) -> None:
        """Each branch due is committed (or aborted) in turn, in the order of the record's branches."""
        gid = record["gid"]
        commit = record["decision"] == COMMIT
        done = p.branch_committed if commit else p.branch_aborted
        now = time.time()
        if commit and all(b["attempts"] == 0 and b["state"] != done for b in record["branches"].values()):
            await self.faults.hit(_point(p, f"before_{p.commit_op}"))
        for name, branch in record["branches"].items():
            if branch["state"] != done and (branch["next_at"] <= now or self._retry_now(gid, name)):
                await self._settle(record, p, name, commit)
        record = self.store.book.get(gid) or record
        if record["state"] == STUCK or any(b["state"] != done for b in record["branches"].values()):
            return
        if record["report"]["next_at"] <= time.time():
            await self._report(record)

    async def _settle(self, record: dict[str, Any], p: Pattern, name: str, commit: bool) -> None:
        gid = record["gid"]
        record = self.store.book.get(gid)
        if record is None:
            return  # forgotten meanwhile (txlab seed)
        op = p.commit_op if commit else p.abort_op
        # an abort lost on its way to a branch that answered ready: the coordinator tries again later
        if not commit and record["branches"][name]["state"] == p.ready and \
                await self.faults.hit(_point(p, f"send_{op}")) == "drop":
            await self._failed(record, name, f"{op} lost on its way to {name} (fault: a partition)", unanswered=False)
            return
        try:
            answer = await self._call(name, op, {"gid": gid, "branch": name})
        except CallFailed as exc:
            await self._failed(record, name, str(exc), unanswered=not exc.refused)
            return
        self.failed_at.pop((gid, name), None)
        await self.store.propose({"op": "settled", "gid": gid, "branch": name,
                                  "outcome": str(answer.get("outcome", ""))[:100], "now": time.time()})
        record = self.store.book.get(gid)
        if commit and record is not None and sum(b["state"] == p.branch_committed
                                                 for b in record["branches"].values()) == 1:
            await self.faults.hit(_point(p, f"after_first_{op}"))

    async def _report(self, record: dict[str, Any]) -> None:
        """Tell the order service the outcome, with each branch's phase-1 answer (its idempotent route)."""
        gid = record["gid"]
        body = {"gid": gid, "pattern": record["pattern"], "decision": record["decision"],
                "reason": record["reason"],
                "branches": {n: {"outcome": b["outcome"], "why": b["why"]} for n, b in record["branches"].items()}}
        try:
            status, text = await self._post(f"{self.settings.url('order')}/internal/transactions/outcome", body, 5.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._failed(record, "report", f"order service unreachable ({exc.__class__.__name__})")
            return
        if status == 404:  # the order service has no order by this gid (begun by hand, or reseeded since): no
            # one waits for this outcome, and retrying would only leave the transaction STUCK
            log.warning("no order %s to report its outcome (%s) to: the order service answered 404", gid,
                        record["decision"])
        elif status != 200:
            await self._failed(record, "report", f"order service answered {status}: {text[:200]}")
            return
        await self.store.propose({"op": "reported", "gid": gid, "now": time.time()})

    async def _failed(self, record: dict[str, Any], step: str, error: str, unanswered: bool = True) -> None:
        """Record a failed attempt; `unanswered` (the participant did not answer well) lets the branch be retried
        as soon as its participant answers again."""
        if unanswered:
            self.failed_at[(record["gid"], step)] = time.monotonic()
        attempts = (record["report"] if step == "report" else record["branches"][step])["attempts"] + 1
        log.warning("%s of %s failed (attempt %d), retried: %s", step, record["gid"], attempts, error[:300])
        await self.store.propose({"op": "failed", "gid": record["gid"], "branch": step, "error": error[:1000],
                                  "next_at": time.time() + self._backoff(attempts),
                                  "max_attempts": self.settings.coordinator_max_attempts, "now": time.time()})

    # -------------------------------------------------------------------------------------- plumbing
    def _backoff(self, attempts: int) -> float:
        """Capped exponential backoff with jitter: a random pause in [d/2, d], d = base * 2^(attempts-1)."""
        s = self.settings
        ceiling = min(s.coordinator_retry_cap_seconds, s.coordinator_retry_base_seconds * 2 ** min(attempts - 1, 30))
        return ceiling * self.rng.uniform(0.5, 1.0)

    def _retry_now(self, gid: str, branch: str) -> bool:
        """Whether the branch's last failed attempt came before its participant answered again."""
        failed = self.failed_at.get((gid, branch))
        return failed is not None and self.answered.get(branch, 0.0) > failed

    async def _call(self, branch: str, op: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """POST a participant's route; its JSON answer (200), or CallFailed with what went wrong."""
        url = f"{self.settings.url(branch)}/internal/{_ROUTES[op]}"
        try:
            status, text = await self._post(url, body, timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallFailed(f"{branch} unreachable for {op} ({exc.__class__.__name__})") from exc
        if status < 500:
            self.answered[branch] = time.monotonic()
        if status != 200:
            raise CallFailed(f"{branch} answered {op} with {status}: {text[:200]}",
                             refused=status < 500 and status not in (408, 429))  # those two: ask again later
        try:
            answer = json.loads(text)
        except ValueError as exc:
            raise CallFailed(f"{branch} answered {op} with something that is not JSON") from exc
        if not isinstance(answer, dict):
            raise CallFailed(f"{branch} answered {op} with {answer!r:.100}")
        return answer

    async def _post(self, url: str, body: dict[str, Any], timeout: float) -> tuple[int, str]:
        """POST `body` as JSON; (status, text). aiohttp rather than httpx: under load httpx's connection pool
        took 90% of the leader's CPU (profiled with py-spy)."""
        with tracer.start_as_current_span(f"POST {url.rsplit('/internal/', 1)[-1]}", kind=SpanKind.CLIENT,
                                          attributes={"http.url": url}) as span:
            async with self.http.post(url, json=body, headers=inject_headers(dict(self._headers)),
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                span.set_attribute("http.status_code", response.status)
                if response.status >= 500:
                    span.set_status(StatusCode.ERROR, f"HTTP {response.status}")
                return response.status, await response.text()


# each pattern's participant routes (their names do not overlap)
_ROUTES = {"try": "tcc/try", "confirm": "tcc/confirm", "cancel": "tcc/cancel",
           "prepare": "xa/prepare", "commit": "xa/commit", "rollback": "xa/rollback",
           "can-commit": "3pc/can-commit", "pre-commit": "3pc/pre-commit", "do-commit": "3pc/do-commit",
           "abort": "3pc/abort"}
_RENAMED = {"coordinator.tcc.after_try_all": "coordinator.tcc.after_try"}  # the name TCC's point had first


def _point(p: Pattern, step: str) -> str:
    """The fault point of a driver step, e.g. `coordinator.2pc.after_prepare_all` (`-` in an op becomes `_`)."""
    name = f"coordinator.{p.name}.{step.replace('-', '_')}"
    return _RENAMED.get(name, name)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, (NotLeader, OutcomeUnknown)):
            log.error("a phase-1 call failed", exc_info=exc)


def _due(record: dict[str, Any], now: float, retry_now: Callable[[str, str], bool]) -> bool:
    """Whether the driver has something to do for this record now."""
    p = PATTERNS[record["pattern"]]
    state = record["state"]
    if p.in_phase1(state):
        return True
    if state not in (p.committing, p.aborting):
        return False  # STUCK waits for an operator
    done = p.branch_committed if record["decision"] == COMMIT else p.branch_aborted
    pending = {name: b for name, b in record["branches"].items() if b["state"] != done}
    if pending:
        return any(b["next_at"] <= now or retry_now(record["gid"], name) for name, b in pending.items())
    return record["report"]["next_at"] <= now
