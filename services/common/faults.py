"""Named fault points: `await faults.hit("relay.after_publish")` is a no-op unless armed.

Arming is kept per process in memory and persisted under `$TXLAB_DATA_DIR/faults/<process>.json`, so a
`crash` with `times=2` survives the restart it causes and fires exactly twice in all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("txlab.faults")

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
    FaultPoint("relay.before_publish", "the relay locked an outbox row and is about to publish it", _ALL,
               _BASIC | {"drop"}),
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
)}


class InjectedFault(RuntimeError):
    """Raised by an armed `error` action."""


class FaultSpecError(ValueError):
    """A fault arming that names an unknown point or an action the point does not support."""


@dataclass
class Arming:
    point: str
    action: str
    delay_ms: int = 0
    times: int | None = None  # None = until disarmed
    probability: float = 1.0
    fired: int = 0

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
        """The body of POST /faults that arms this."""
        return {k: v for k, v in asdict(self).items() if k != "fired"}

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


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


class FaultInjector:
    """The fault points of one process."""

    def __init__(self, process: str, state_dir: Path | None = None, rng: random.Random | None = None) -> None:
        self.process = process
        self._path = state_dir / f"{process}.json" if state_dir else None
        self._rng = rng or random.Random()
        self.armed: dict[str, Arming] = {}
        self._load()

    def _load(self) -> None:
        if self._path and self._path.exists():
            self.armed = {a["point"]: Arming(**a) for a in json.loads(self._path.read_text())}

    def _save(self) -> None:
        if not self._path:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(a) for a in self.armed.values()]))
        os.replace(tmp, self._path)

    def arm(self, arming: Arming) -> None:
        arming.validate()
        if self.process not in POINTS[arming.point].services:
            raise FaultSpecError(f"{arming.point} does not exist in the {self.process} service")
        self.armed[arming.point] = arming
        self._save()

    def disarm(self, point: str | None = None) -> None:
        if point is None:
            self.armed.clear()
        else:
            self.armed.pop(point, None)
        self._save()

    async def hit(self, name: str) -> str | None:
        """Fire the fault armed at `name`, if any. crash/error/delay act here; for drop and duplicate the
        action's name is returned and the caller acts."""
        arming = self.armed.get(name)
        if arming is None or arming.exhausted:
            return None
        if arming.probability < 1.0 and self._rng.random() >= arming.probability:
            return None
        arming.fired += 1
        self._save()  # before acting: a crash must not fire again after the restart it causes
        log.warning("fault %s fired: %s (%d so far)", name, arming.action, arming.fired)
        if arming.action == "crash":
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)
        if arming.action == "error":
            raise InjectedFault(f"injected error at {name}")
        if arming.action == "delay":
            await asyncio.sleep(arming.delay_ms / 1000)
            return None
        return arming.action
