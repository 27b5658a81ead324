"""Global transactions as data: the records the coordinator replicates, and the one function that changes them.

A record is a plain JSON object, so the Raft store and the etcd store keep the very same thing, and the admin
API shows it as it is. Every change is a command (also a plain object) applied by `TxnBook.apply`, which is
deterministic: it reads the time only from the command (stamped by the leader that proposed it), so every
replica that applies the same commands holds the same records.

The life of a transaction, whatever its pattern:

1. **phase 1**, one round or more (TCC: TRYING; 2PC: PREPARING; 3PC: CAN_COMMIT then PRE_COMMITTING): each
   branch is asked to do the round's work (Try, prepare, can-commit, pre-commit); each answer is recorded on
   its branch: ready (TRIED, PREPARED, VOTED_YES, PRE_COMMITTED) or REFUSED. A round every branch answered
   ready before the deadline hands over to the next one;
2. **the decision**, written before any phase-2 call: commit when every branch is ready in the last round
   before the deadline, abort otherwise (TCC: CONFIRMING or CANCELLING; 2PC and 3PC: COMMITTING or ABORTING);
3. **phase 2**: each branch is committed or aborted until it succeeds; a failed attempt is recorded with the
   time of the next one (capped exponential backoff with jitter, computed by the driver);
4. **the report**: the order service is told the outcome, until it acknowledges;
5. then the transaction is **final** (CONFIRMED or CANCELLED; COMMITTED or ABORTED).

A step that failed `max_attempts` times makes the transaction STUCK, remembering where it was; an operator's
retry puts it back there with fresh attempts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

STUCK = "STUCK"
TIMELINE_MAX = 40  # entries kept per branch and per transaction (the oldest go first)


@dataclass(frozen=True)
class Round:
    """One round of phase 1: the transaction's state while it runs, the participant route it calls, and the
    state of a branch that answered ready."""

    state: str
    op: str
    ready: str


@dataclass(frozen=True)
class Pattern:
    """The names a pattern gives to the common life of a transaction (see the module docstring)."""

    name: str
    rounds: tuple[Round, ...]
    committing: str
    aborting: str
    committed: str
    aborted: str
    branch_committed: str
    branch_aborted: str
    commit_op: str  # the participant routes of phase 2
    abort_op: str

    @property
    def final(self) -> tuple[str, str]:
        return self.committed, self.aborted

    @property
    def ready(self) -> str:
        """A branch ready to commit: it answered ready in the last round."""
        return self.rounds[-1].ready

    def in_phase1(self, state: str) -> bool:
        return any(r.state == state for r in self.rounds)

    def states(self) -> tuple[str, ...]:
        return *(r.state for r in self.rounds), self.committing, self.aborting, self.committed, self.aborted, STUCK


PATTERNS: dict[str, Pattern] = {p.name: p for p in (
    Pattern("tcc", (Round("TRYING", "try", "TRIED"),), "CONFIRMING", "CANCELLING", "CONFIRMED", "CANCELLED",
            "CONFIRMED", "CANCELLED", "confirm", "cancel"),
    Pattern("2pc", (Round("PREPARING", "prepare", "PREPARED"),), "COMMITTING", "ABORTING", "COMMITTED", "ABORTED",
            "COMMITTED", "ROLLED_BACK", "commit", "rollback"),
    Pattern("3pc", (Round("CAN_COMMIT", "can-commit", "VOTED_YES"), Round("PRE_COMMITTING", "pre-commit",
                                                                          "PRE_COMMITTED")),
            "COMMITTING", "ABORTING", "COMMITTED", "ABORTED", "COMMITTED", "ABORTED", "do-commit", "abort"),
)}
FINAL_STATES = frozenset(s for p in PATTERNS.values() for s in p.final)
ALL_STATES = frozenset(s for p in PATTERNS.values() for s in p.states())
BRANCHES = ("inventory", "payment")  # the participants a branch may name
PENDING, REFUSED = "PENDING", "REFUSED"
COMMIT, ABORT = "commit", "abort"


def is_final(record: dict[str, Any]) -> bool:
    return record["state"] in FINAL_STATES


def _mark(timeline: list[list[Any]], now: float, text: str) -> None:
    timeline.append([now, text])
    if len(timeline) > TIMELINE_MAX:
        del timeline[: len(timeline) - TIMELINE_MAX]


def new_record(gid: str, pattern: str, bodies: dict[str, dict[str, Any]], deadline: float,
               now: float) -> dict[str, Any]:
    p = PATTERNS[pattern]
    branches = {name: {"state": PENDING, "body": body, "outcome": None, "why": None, "answered_at": None, "attempts": 0,
                       "next_at": 0.0, "last_error": None, "result": None, "timeline": []}
                for name, body in bodies.items()}
    return {"gid": gid, "pattern": pattern, "state": p.rounds[0].state, "round": 0, "decision": None, "reason": None,
            "deadline": deadline, "created": now, "updated": now, "stuck": None, "retries": 0,
            "branches": branches,
            "report": {"done": False, "attempts": 0, "next_at": 0.0, "last_error": None},
            "timeline": [[now, f"begun: {p.rounds[0].state}"]]}


class Malformed(ValueError):
    """A command that no replica can apply; every replica refuses it the same way."""


def _number(cmd: dict[str, Any], name: str) -> float:
    value = cmd.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise Malformed(f"{name} must be a finite number")
    return float(value)


def _text(cmd: dict[str, Any], name: str, limit: int = 500) -> str:
    value = cmd.get(name)
    if not isinstance(value, str) or len(value) > limit:
        raise Malformed(f"{name} must be a string of at most {limit} characters")
    return value


class TxnBook:
    """Every global transaction this coordinator knows, by gid, in the order they were begun."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.active: dict[str, None] = {}  # the gids not final, in the order they were begun

    # ------------------------------------------------------------------------------------------ reads
    def get(self, gid: str) -> dict[str, Any] | None:
        return self.records.get(gid)

    def select(self, state: str | None = None, pattern: str | None = None) -> Iterator[dict[str, Any]]:
        """Records matching the filters, newest first."""
        source = self.active if state is not None and state not in FINAL_STATES else self.records
        for gid in reversed(source):
            record = self.records[gid]
            if (state is None or record["state"] == state) and (pattern is None or record["pattern"] == pattern):
                yield record

    def counts(self) -> dict[str, int]:
        """How many transactions are in each state."""
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    # ---------------------------------------------------------------------------------------- changes
    def apply(self, cmd: Any) -> str:
        """Apply one command; returns what happened (`created`, `exists`, `ok`, `ignored`, `unknown gid`, or
        `malformed: ...`). Deterministic: the same commands in the same order give the same records."""
        try:
            if not isinstance(cmd, dict):
                raise Malformed("a command is an object")
            op = cmd.get("op")
            if op == "reset":
                self.records.clear()
                self.active.clear()
                return "ok"
            now = _number(cmd, "now")
            gid = _text(cmd, "gid", 128)
            if op == "begin":
                return self._begin(cmd, gid, now)
            record = self.records.get(gid)
            if record is None:
                return "unknown gid"
            handler = _HANDLERS.get(op)
            if handler is None:
                raise Malformed(f"unknown op {op!r}")
            outcome = handler(self, record, cmd, now)
            if outcome != "ignored":
                record["updated"] = now
                if is_final(record):
                    self.active.pop(gid, None)
                else:
                    self.active[gid] = None
            return outcome
        except Malformed as exc:
            return f"malformed: {exc}"

    def _begin(self, cmd: dict[str, Any], gid: str, now: float) -> str:
        if gid in self.records:
            return "exists"
        pattern = cmd.get("pattern")
        bodies = cmd.get("branches")
        if pattern not in PATTERNS:
            raise Malformed(f"unknown pattern {pattern!r}")
        if (not isinstance(bodies, dict) or not bodies or not set(bodies) <= set(BRANCHES)
                or not all(isinstance(b, dict) for b in bodies.values())):
            raise Malformed(f"branches must map some of {', '.join(BRANCHES)} to their bodies")
        self.records[gid] = new_record(gid, pattern, bodies, _number(cmd, "deadline"), now)
        if isinstance(cmd.get("traceparent"), str):  # the trace the transaction belongs to (its order's)
            self.records[gid]["traceparent"] = cmd["traceparent"][:64]
        self.active[gid] = None
        return "created"

    def _branch(self, record: dict[str, Any], cmd: dict[str, Any]) -> dict[str, Any]:
        branch = record["branches"].get(cmd.get("branch"))
        if branch is None:
            raise Malformed(f"no branch {cmd.get('branch')!r} in {record['gid']}")
        return branch

    def _answered(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        """A branch's answer in a round of phase 1 (`round`, 0 when absent): ready (`ok`) or refused, with the
        participant's outcome and reason. The last ready answer of a round, before the deadline, starts the
        next round."""
        p = PATTERNS[record["pattern"]]
        branch = self._branch(record, cmd)
        outcome = _text(cmd, "outcome", 100)  # validated before anything changes
        why = cmd.get("why") if isinstance(cmd.get("why"), str) else None
        number = cmd.get("round", 0)
        if not isinstance(number, int) or not 0 <= number < len(p.rounds):
            raise Malformed(f"round must be 0 to {len(p.rounds) - 1}")
        current = record.get("round", 0)
        op = p.rounds[number].op
        if number < current or (number == current and branch["answered_at"] is not None):
            return "ignored"  # a second answer, or one to a round already over
        if number > current or not p.in_phase1(record["state"]):  # decided without it: kept on the timeline only
            _mark(branch["timeline"], now, f"{op} answered after the decision: {outcome}"
                                           + (f" ({why})" if why else ""))
            if number == current:
                branch["answered_at"] = now
            return "late"
        ok = cmd.get("ok") is True
        branch["state"] = p.rounds[number].ready if ok else REFUSED
        branch["outcome"] = outcome
        branch["why"] = why
        branch["answered_at"] = now
        branch["attempts"], branch["next_at"], branch["last_error"] = 0, 0.0, None
        _mark(branch["timeline"], now, f"{op}: {outcome}" + (f" ({why})" if why else ""))
        last = number == len(p.rounds) - 1
        everyone = all(b["state"] == p.rounds[number].ready for b in record["branches"].values())
        if everyone and not last and now <= record["deadline"]:
            record["round"] = number + 1
            record["state"] = p.rounds[number + 1].state
            for b in record["branches"].values():
                b["state"], b["answered_at"] = PENDING, None
            _mark(record["timeline"], now, f"every branch answered {op} ready: {record['state']}")
        return "ok"

    def _decide(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        p = PATTERNS[record["pattern"]]
        decision = cmd.get("decision")
        if decision not in (COMMIT, ABORT):
            raise Malformed("decision must be commit or abort")
        if record["decision"] is not None:
            return "ok" if record["decision"] == decision else "ignored"
        if not p.in_phase1(record["state"]):
            return "ignored"
        if decision == COMMIT and (record.get("round", 0) != len(p.rounds) - 1
                                   or any(b["state"] != p.ready for b in record["branches"].values())):
            return "ignored"  # commit needs every branch ready in the last round
        record["decision"] = decision
        record["reason"] = cmd.get("reason") if isinstance(cmd.get("reason"), str) else None
        record["state"] = p.committing if decision == COMMIT else p.aborting
        for branch in record["branches"].values():
            branch["attempts"], branch["next_at"], branch["last_error"] = 0, 0.0, None
        why = f" ({record['reason']})" if record["reason"] else ""
        _mark(record["timeline"], now, f"decided {decision}{why}: {record['state']}")
        return "ok"

    def _settled(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        """A branch's phase-2 call succeeded."""
        p = PATTERNS[record["pattern"]]
        branch = self._branch(record, cmd)
        if record["decision"] is None or branch["state"] in (p.branch_committed, p.branch_aborted):
            return "ignored"
        commit = record["decision"] == COMMIT
        branch["state"] = p.branch_committed if commit else p.branch_aborted
        branch["next_at"], branch["last_error"] = 0.0, None
        answer = cmd.get("outcome") if isinstance(cmd.get("outcome"), str) else branch["state"]
        branch["result"] = answer  # what the participant did (a 3PC participant may have committed on its own)
        _mark(branch["timeline"], now, f"{p.commit_op if commit else p.abort_op}: {answer}")
        return "ok"

    def _failed(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        """An attempt failed (a branch's call, or the report with `branch` = "report"); the next one is due at
        `next_at`. Past `max_attempts` failed attempts of a phase-2 step the transaction is STUCK."""
        if record["state"] in FINAL_STATES or record["state"] == STUCK:
            return "ignored"
        step = record["report"] if cmd.get("branch") == "report" else self._branch(record, cmd)
        error, next_at = _text(cmd, "error", 1000), _number(cmd, "next_at")  # validated before anything changes
        step["attempts"] += 1
        step["next_at"] = next_at
        step["last_error"] = error
        record["retries"] += 1
        if "timeline" in step:
            _mark(step["timeline"], now, f"attempt {step['attempts']} failed: {error}")
        limit = cmd.get("max_attempts")
        if isinstance(limit, int) and record["decision"] is not None and step["attempts"] >= limit:
            what = "report" if step is record["report"] else f"branch {cmd['branch']}"
            record["stuck"] = {"from": record["state"], "why": f"{what} failed {step['attempts']} times: {error}"}
            record["state"] = STUCK
            _mark(record["timeline"], now, f"STUCK: {record['stuck']['why']}")
        return "ok"

    def _reported(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        """The order service acknowledged the outcome: the transaction is final."""
        p = PATTERNS[record["pattern"]]
        if record["state"] not in (p.committing, p.aborting):
            return "ignored"
        done = p.branch_committed if record["decision"] == COMMIT else p.branch_aborted
        if any(b["state"] != done for b in record["branches"].values()):
            return "ignored"
        record["report"].update(done=True, next_at=0.0, last_error=None)
        record["state"] = p.committed if record["decision"] == COMMIT else p.aborted
        _mark(record["timeline"], now, f"reported to the order service: {record['state']}")
        return "ok"

    def _retry(self, record: dict[str, Any], cmd: dict[str, Any], now: float) -> str:
        """An operator's retry: a STUCK transaction goes back to where it was, every step with fresh attempts."""
        if record["state"] in FINAL_STATES:
            return "ignored"
        if record["state"] == STUCK:
            record["state"] = record["stuck"]["from"]
            record["stuck"] = None
        for step in (*record["branches"].values(), record["report"]):
            step["attempts"], step["next_at"] = 0, 0.0
        _mark(record["timeline"], now, f"retried by an operator: {record['state']}")
        return "ok"

    # ------------------------------------------------------------------------------------- snapshots
    def dump(self) -> list[dict[str, Any]]:
        return list(self.records.values())

    def load(self, records: list[dict[str, Any]]) -> None:
        self.records = {r["gid"]: r for r in records}
        self.active = {r["gid"]: None for r in records if not is_final(r)}

    def load_one(self, record: dict[str, Any]) -> None:
        """Put one record in (a new one, or a newer version of one), as a store read or wrote it."""
        self.records[record["gid"]] = record
        if is_final(record):
            self.active.pop(record["gid"], None)
        else:
            self.active[record["gid"]] = None


_HANDLERS = {"answered": TxnBook._answered, "decide": TxnBook._decide, "settled": TxnBook._settled,
             "failed": TxnBook._failed, "reported": TxnBook._reported, "retry": TxnBook._retry}
