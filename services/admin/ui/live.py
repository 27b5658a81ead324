"""The overview's live state: sampled once a second, and only while a dashboard is connected.

A sample is the Jepsen bank test's two totals (money, stock) and whether a fault was armed; the overview's
other figures (orders, backlogs, the invariants) are refreshed alongside, the invariants every few seconds
in a thread (they read every row)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from services.admin.ui import data
from services.checker import CannotCheck, run_checks
from services.common.settings import Settings
from services.common.tracing import untraced

log = logging.getLogger("txlab.admin.ui")

SAMPLE_SECONDS = 1.0
HISTORY = 600  # samples kept: ten minutes
INVARIANTS_EVERY = 5.0  # seconds between two invariant checks
QUEUES_EVERY = 2.0


@dataclass
class Sample:
    t: float
    money: int
    stock: int
    armed: int  # armings in force (not yet used up)


@dataclass
class Live:
    app: FastAPI
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY))
    fired: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))  # telemetry's fired faults
    snapshot: dict[str, Any] = field(default_factory=dict)
    initial: dict[str, int] = field(default_factory=dict)
    invariants: dict[str, Any] | None = None
    subscribers: int = 0
    _task: asyncio.Task[None] | None = None
    _check: asyncio.Task[None] | None = None
    _last_check: float = 0.0
    _last_queues: float = 0.0
    updated: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Live]:
        """While a dashboard client is connected: the sampler runs (it stops after the last one leaves)."""
        self.subscribers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ui-sampler")
        try:
            yield self
        finally:
            self.subscribers -= 1

    async def _run(self) -> None:
        while self.subscribers > 0:
            started = time.monotonic()
            try:
                with untraced():  # a poll: it would crowd every process's ring of recent spans
                    await self.sample()
            except Exception:  # a dashboard must outlive whatever it watches
                log.exception("dashboard sample failed")
            self.updated.set()
            self.updated = asyncio.Event()
            await asyncio.sleep(max(0.05, SAMPLE_SECONDS - (time.monotonic() - started)))

    async def sample(self) -> None:
        settings: Settings = self.app.state.settings
        errors: list[str] = []
        snapshot: dict[str, Any] = {"errors": errors, "at": time.time()}
        armed = await self._armed(errors)
        try:
            totals = await asyncio.to_thread(data.totals, settings)
            self.initial = {"money": totals["money_initial"], "stock": totals["stock_initial"]}
            self.history.append(Sample(time.time(), totals["money"], totals["stock"], armed))
        except data.Unavailable as exc:
            errors.append(str(exc))
        try:
            snapshot["orders"] = await asyncio.to_thread(data.orders_by_pattern, settings)
            snapshot["backlogs"] = await asyncio.to_thread(data.database_backlogs, settings)
        except data.Unavailable as exc:
            errors.append(str(exc))
        if time.monotonic() - self._last_queues >= QUEUES_EVERY or "queues" not in self.snapshot:
            self._last_queues = time.monotonic()
            try:
                snapshot["queues"] = await data.queue_backlogs(settings)
            except data.Unavailable as exc:
                errors.append(str(exc))
        else:
            snapshot["queues"] = self.snapshot.get("queues")
        snapshot["transactions"] = await data.transaction_counts(self.app)
        last = max((f.get("ts") or 0 for f in self.fired), default=0.0)
        telemetry = await data.fetch_telemetry(self.app, limit=200, kinds="faults", since=last)
        if telemetry is not None:
            seen = {(f.get("ts"), f.get("process"), f.get("point")) for f in self.fired}
            for fault in sorted(telemetry["faults"], key=lambda f: f.get("ts") or 0):
                if (fault.get("ts"), fault.get("process"), fault.get("point")) not in seen:
                    self.fired.append(fault)
        self.snapshot = snapshot
        if time.monotonic() - self._last_check >= INVARIANTS_EVERY and (self._check is None or self._check.done()):
            self._last_check = time.monotonic()
            self._check = asyncio.create_task(self._check_invariants(settings))

    async def _armed(self, errors: list[str]) -> int:
        status, body = await data.api_json(self.app, "GET", "/faults")
        if status != 200 or not isinstance(body, list):
            errors.append(f"faults: {body}")
            return 0
        return sum(1 for a in body if a.get("times") is None or a.get("fired", 0) < a["times"])

    async def _check_invariants(self, settings: Settings) -> None:
        try:
            report = (await asyncio.to_thread(run_checks, settings, 0.0)).to_dict()
        except CannotCheck as exc:
            self.invariants = {"verdict": "unknown", "text": f"cannot check: {exc}", "at": time.time()}
            return
        self.invariants = verdict(report) | {"at": time.time()}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The badge: `holds`; `settling` while work is in flight (a busy system's provisional findings are not
    violations); or `violated`, naming the first violation found on a quiet system."""
    invariants = report["invariants"]
    convergence = next(i for i in invariants if i["name"].startswith("convergence"))
    others = [i for i in invariants if i is not convergence]
    if report["holds"]:
        return {"verdict": "holds", "text": "every invariant holds"}
    if not convergence["holds"] and any(v for k, v in convergence["counts"].items()
                                        if k.endswith(("_in_flight", "_queued", "_outbox_pending", "orders_pending"))):
        moving = ", ".join(f"{k} {v}" for k, v in convergence["counts"].items() if v)
        return {"verdict": "settling", "text": f"settling: {moving}"}
    first = next((i for i in others if not i["holds"]), convergence)
    return {"verdict": "violated", "text": f"{first['name'].split(':')[0]}: {first['violations'][0]}",
            "count": sum(i["violation_count"] for i in invariants)}


def live_of(app: FastAPI) -> Live:
    live = getattr(app.state, "ui_live", None)
    if live is None:
        live = app.state.ui_live = Live(app)
    return live
