"""Named fault points: `await faults.hit("relay.after_publish")` is a no-op unless armed.

Each process keeps its armings in memory and persists them under `$TXLAB_DATA_DIR/faults/<process>.json`.
An arming's `times` counts across processes and restarts: the admin API gives the arming one id in every
service it fans out to, and every firing is counted, before it acts, in `$TXLAB_DATA_DIR/faults/fired.json`,
which all processes of a deployment share and change only under an exclusive lock. So `crash,times=1` armed
in three services crashes one process once, and `crash,times=2` fires exactly twice across the restarts it causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

log = logging.getLogger("txlab.faults")
FIRED: deque[dict[str, Any]] = deque(maxlen=500)  # this process's recent firings, for the dashboard's history

CRASH_EXIT_CODE = 86
ACTIONS = ("crash", "error", "delay", "drop", "duplicate")
_BASIC = frozenset({"crash", "error", "delay"})


@dataclass(frozen=True)
class FaultPoint:
    name: str
    description: str
    services: tuple[str, ...]
    actions: frozenset[str] = _BASIC


_ALL = ("order", "inventory", "payment")
POINTS: dict[str, FaultPoint] = {p.name: p for p in (
    FaultPoint("order.after_local_commit",
               "POST /orders committed the order and its outbox row, before answering the client", ("order",)),
    FaultPoint("relay.before_publish",
               "the relay leased an outbox row and is about to publish it (drop: RabbitMQ refuses it as unroutable)",
               _ALL, _BASIC | {"drop"}),
    FaultPoint("relay.after_publish", "the broker confirmed the message; the row is not yet marked SENT", _ALL),
    FaultPoint("order.before_commit", "the order service applied an event; its transaction is not committed",
               ("order",)),
    FaultPoint("inventory.before_commit", "inventory applied an event; its transaction is not committed",
               ("inventory",)),
    FaultPoint("payment.before_commit", "payment applied an event; its transaction is not committed",
               ("payment",)),
    FaultPoint("bus.publish", "a message is handed to RabbitMQ (duplicate publishes it twice)", _ALL,
               frozenset({"delay", "duplicate", "error"})),
    FaultPoint("bus.deliver", "a consumer received a message (duplicate hands it to the handler twice)", _ALL,
               frozenset({"delay", "duplicate", "error", "crash"})),
    FaultPoint("order.after_half_sent", "halfmsg: the half message is stored, the local transaction not begun",
               ("order",)),
    FaultPoint("order.before_half_decision",
               "halfmsg: the order is committed locally, the commit not yet sent to the broker", ("order",)),
    FaultPoint("broker.before_deliver", "the broker is about to publish a committed message", ("broker",)),
    FaultPoint("broker.check_back", "the broker checks a half message back (error: the producer is unreachable)",
               ("broker",)),
    *(FaultPoint(f"{svc}.tcc.{op}", f"{svc} received a TCC {op.title()} (delay past the deadline, error or crash"
                 + ("; drop: it is done, and its answer lost)" if op == "try" else ")"), (svc,),
                 _BASIC | {"drop"} if op == "try" else _BASIC)
      for svc in ("inventory", "payment") for op in ("try", "confirm", "cancel")),
    FaultPoint("coordinator.tcc.after_try", "tcc: every Try answered (or the deadline passed), no decision logged "
               "yet (crash: the leader dies)", ("coordinator",)),
    FaultPoint("coordinator.tcc.after_decision", "tcc: the decision is in the log, no Confirm or Cancel sent yet "
               "(crash: the leader dies)", ("coordinator",)),
    FaultPoint("coordinator.tcc.hold_try", "tcc: a Try is about to leave the coordinator (delay: it reaches its "
               "participant late, after its Cancel when past the deadline)", ("coordinator",),
               frozenset({"delay"})),
    *(FaultPoint(f"{svc}.xa.prepare", f"2pc: {svc} prepared its branch, the answer not yet sent (crash: it dies "
                 "holding the prepared transaction; drop: the answer is lost)", (svc,), _BASIC | {"drop"})
      for svc in ("inventory", "payment")),
    *(FaultPoint(f"{svc}.xa.{op}", f"2pc: {svc} received a {op} (crash: it dies with its branch prepared)", (svc,))
      for svc in ("inventory", "payment") for op in ("commit", "rollback")),
    *(FaultPoint(f"{svc}.3pc.can_commit", f"3pc: {svc} was asked to vote", (svc,)) for svc in ("inventory", "payment")),
    *(FaultPoint(f"{svc}.3pc.pre_commit", f"3pc: {svc} pre-committed (prepared) its branch, the acknowledgement not "
                 "yet sent (drop: the acknowledgement is lost)", (svc,), _BASIC | {"drop"})
      for svc in ("inventory", "payment")),
    *(FaultPoint(f"{svc}.3pc.{op}", f"3pc: {svc} received {'an' if op == 'abort' else 'a'} {op.replace('_', '-')}",
                 (svc,))
      for svc in ("inventory", "payment") for op in ("do_commit", "abort")),
    FaultPoint("coordinator.2pc.after_prepare_one", "2pc: one branch answered its prepare (crash: the leader dies)",
               ("coordinator",)),
    FaultPoint("coordinator.2pc.after_prepare_all", "2pc: every prepare answered (or the deadline passed), no "
               "decision logged yet (crash: the leader dies while the participants hold their locks)",
               ("coordinator",)),
    FaultPoint("coordinator.2pc.after_decision", "2pc: the decision is in the log, no commit or rollback sent yet "
               "(crash: the leader dies)", ("coordinator",)),
    FaultPoint("coordinator.2pc.after_first_commit", "2pc: one branch committed, the other not yet (crash: the "
               "leader dies)", ("coordinator",)),
    FaultPoint("coordinator.3pc.after_pre_commit_one", "3pc: one branch acknowledged its pre-commit (crash: the "
               "leader dies)", ("coordinator",)),
    FaultPoint("coordinator.3pc.before_do_commit", "3pc: the commit is decided and logged, no do-commit sent yet "
               "(crash: the leader dies; delay: the pre-committed participants commit on their own first)",
               ("coordinator",)),
    *(FaultPoint(f"coordinator.{pattern}.send_{op}", f"{pattern}: a {op} is about to leave for a branch that "
                 f"answered ready (drop: it is lost, a partition; the coordinator tries again later)",
                 ("coordinator",), frozenset({"drop", "delay"}))
      for pattern, op in (("tcc", "cancel"), ("2pc", "rollback"), ("3pc", "abort"))),
)}


def process_kind(process: str) -> str:
    """What a fault point's `services` name: the process name, or `coordinator` for every replica."""
    return "coordinator" if process.startswith("coordinator-") else process


class InjectedFault(RuntimeError):
    """Raised by an armed `error` action."""


class FaultSpecError(ValueError):
    """A fault arming that names an unknown point or an action the point does not support."""


@dataclass
class Arming:
    point: str
    action: str
    delay_ms: int = 0
    times: int | None = None  # None = until disarmed, across all processes
    probability: float = 1.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per arming, shared by the processes armed

    def validate(self) -> Arming:
        point = POINTS.get(self.point)
        if point is None:
            raise FaultSpecError(f"unknown fault point {self.point!r}; see GET /faults/points")
        if self.action not in point.actions:
            raise FaultSpecError(f"{self.point} supports {', '.join(sorted(point.actions))}, not {self.action!r}")
        if self.times is not None and self.times < 1:
            raise FaultSpecError("times must be >= 1")
        if not 0.0 < self.probability <= 1.0:
            raise FaultSpecError("probability must be in (0, 1]")
        if self.action == "delay" and not 0 < self.delay_ms <= 60_000:
            raise FaultSpecError("delay needs a duration in ms between 1 and 60000 (delay:200)")
        return self

    def request(self) -> dict[str, object]:
        """The body of POST /faults that arms this (the admin API names the arming)."""
        return {k: v for k, v in asdict(self).items() if k != "id"}


_SPEC = re.compile(r"^(?P<point>[a-z0-9_.]+)=(?P<action>[a-z]+)(?::(?P<ms>\d+))?(?P<opts>(?:,[a-z]+=[0-9.]+)*)$")


def parse_spec(spec: str) -> Arming:
    """Parse `point=action[:ms][,times=N][,p=0.1]`, e.g. `relay.after_publish=crash,times=2`."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise FaultSpecError(f"cannot parse fault {spec!r}; expected point=action[:ms][,times=N][,p=P]")
    opts = dict(kv.split("=", 1) for kv in m["opts"].split(",") if kv)
    unknown = set(opts) - {"times", "p"}
    if unknown:
        raise FaultSpecError(f"unknown option(s) {', '.join(sorted(unknown))} in {spec!r}")
    return Arming(point=m["point"], action=m["action"], delay_ms=int(m["ms"] or 0),
                  times=int(opts["times"]) if "times" in opts else None,
                  probability=float(opts.get("p", 1.0))).validate()


Counts = dict[str, dict[str, int]]  # arming id -> process -> times fired


class FiredCounts:
    """How often each arming fired in each process: one file shared by every process of a deployment.

    An arming's entry exists from its arming until its disarming; a process that finds no entry does not fire
    (another process already disarmed it). Changes happen under an exclusive `flock`, replacing the file
    atomically, so readers need no lock."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._path = state_dir / "fired.json"
        self._lock = state_dir / "fired.lock"

    def read(self) -> Counts:
        try:
            return json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Counts]:
        with open(self._lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield self.read()

    def _write(self, counts: Counts) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        os.replace(tmp, self._path)

    def add(self, arming_id: str) -> None:
        with self._locked() as counts:
            if arming_id not in counts:  # the same arming reaching another process keeps what fired already
                counts[arming_id] = {}
                self._write(counts)

    def remove(self, arming_ids: set[str]) -> None:
        with self._locked() as counts:
            if arming_ids & counts.keys():
                self._write({k: v for k, v in counts.items() if k not in arming_ids})

    def claim(self, arming: Arming, process: str) -> int | None:
        """Count one firing of `arming` in `process` and return the total so far, or None when it may not fire
        (`times` used up, or disarmed)."""
        with self._locked() as counts:
            fired = counts.get(arming.id)
            if fired is None or (arming.times is not None and sum(fired.values()) >= arming.times):
                return None
            fired[process] = fired.get(process, 0) + 1
            self._write(counts)
            return sum(fired.values())


class FaultInjector:
    """The fault points of one process."""

    def __init__(self, process: str, state_dir: Path, rng: random.Random | None = None) -> None:
        self.process = process
        self._counts = FiredCounts(state_dir)
        self._path = state_dir / f"{process}.json"
        self._rng = rng or random.Random()
        self._spent: set[str] = set()  # armings this process saw used up or disarmed: no lock for them again
        self.armed: dict[str, Arming] = {}
        self._load()

    def _load(self) -> None:
        if self._path.exists():
            # an arming without an id was saved by an older version, whose count was per process: drop it
            self.armed = {a["point"]: Arming(**a) for a in json.loads(self._path.read_text()) if "id" in a}

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(a) for a in self.armed.values()]))
        os.replace(tmp, self._path)

    def arm(self, arming: Arming) -> None:
        arming.validate()
        if process_kind(self.process) not in POINTS[arming.point].services:
            raise FaultSpecError(f"{arming.point} does not exist in the {self.process} service")
        self._counts.add(arming.id)
        self._spent.discard(arming.id)
        self.armed[arming.point] = arming
        self._save()

    def disarm(self, point: str | None = None) -> None:
        """Disarm one point, or all, and forget how often those armings fired, in every process."""
        gone = [self.armed.pop(p) for p in (list(self.armed) if point is None else [point]) if p in self.armed]
        self._save()
        self._counts.remove({a.id for a in gone})

    def fired_by(self, arming_id: str) -> dict[str, int]:
        """How often the arming fired in each process (their sum is what `times` limits)."""
        return self._counts.read().get(arming_id, {})

    def status(self) -> list[dict[str, Any]]:
        """The armings of this process, each with how often it fired in all and here."""
        counts = self._counts.read()
        rows = []
        for arming in self.armed.values():
            fired = counts.get(arming.id, {})
            rows.append(asdict(arming) | {"fired": sum(fired.values()), "fired_here": fired.get(self.process, 0)})
        return rows

    async def hit(self, name: str) -> str | None:
        """Fire the fault armed at `name`, if any. crash/error/delay act here; for drop and duplicate the
        action's name is returned and the caller acts."""
        arming = self.armed.get(name)
        if arming is None or arming.id in self._spent:
            return None
        if arming.probability < 1.0 and self._rng.random() >= arming.probability:
            return None
        fired = self._counts.claim(arming, self.process)  # counted before acting: a crash must not fire again
        if fired is None:
            self._spent.add(arming.id)
            return None
        log.warning("fault %s fired: %s (%d so far in all)", name, arming.action, fired)
        FIRED.append({"ts": time.time(), "process": self.process, "point": name, "action": arming.action,
                      "arming": arming.id})
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("fault fired", {"point": name, "action": arming.action})
        if arming.action == "crash":
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)
        if arming.action == "error":
            raise InjectedFault(f"injected error at {name}")
        if arming.action == "delay":
            await asyncio.sleep(arming.delay_ms / 1000)
            return None
        return arming.action
