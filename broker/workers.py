"""The broker's two loops: check-back of half messages left undecided, and delivery of committed ones.

Check-back: a message still HALF after its immunity time is POSTed to its producer's `check_url` as
`{"id", "topic", "body"}`; the producer answers `{"decision": "COMMIT" | "ROLLBACK" | "UNKNOWN"}`. No answer,
an error or anything else counts as UNKNOWN. Checks repeat every interval; at the limit the message is
PARKED for an operator.

Delivery: a COMMITTED message is published to RabbitMQ with publisher confirms, its body unchanged and its
topic as the routing key, then marked DELIVERED (at least once: a crash between the two publishes it again,
and consumers dedupe by message id). An unreachable RabbitMQ delays delivery without counting an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import store
from broker.store import Claimed, Decision, Due, State
from services.common.faults import FaultInjector, InjectedFault
from services.common.settings import Settings
from services.common.tracing import context_of, tracer
from services.messaging.connection import capped_backoff
from services.messaging.failures import is_transient
from services.messaging.publisher import BrokerUnavailable, Publisher, PublishRefused

log = logging.getLogger("txlab.broker")

BATCH = 50
CHECKS_AT_ONCE = 16


class CheckBack:
    def __init__(self, engine: AsyncEngine, http: httpx.AsyncClient, settings: Settings, me: str,
                 faults: FaultInjector) -> None:
        self.engine, self.http, self.settings, self.me, self.faults = engine, http, settings, me, faults
        self._slots = asyncio.Semaphore(CHECKS_AT_ONCE)
        self.answers: Counter[str] = Counter()  # check-backs by the producer's answer

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                done = await self.check_due()
                failures = 0
            except Exception as exc:
                if not is_transient(exc):
                    raise  # the process exits and its supervisor starts it again (broker/app.py)
                failures += 1  # the database is away or restarting: wait it out
                log.warning("check-back paused: %r", exc)
                await asyncio.sleep(capped_backoff(failures, 0.5, 5.0))
                continue
            if done < BATCH:
                await asyncio.sleep(self.settings.broker_poll_seconds)

    async def check_due(self) -> int:
        claimed = await store.claim_checks(self.engine, self.me, self.settings.broker_lease_seconds, BATCH)
        await asyncio.gather(*(self.check(m) for m in claimed))
        return len(claimed)

    async def recheck(self, message_id: Any) -> State | None:
        """Check an undecided message back now (an operator's re-check of a PARKED one)."""
        claimed = await store.claim_checks(self.engine, self.me, self.settings.broker_lease_seconds, 1,
                                           ids=[message_id])
        if not claimed:
            return None
        return await self.check(claimed[0])

    async def check(self, m: Claimed) -> State | None:
        # a span of the order's trace: the producer's answer (and its own spans) show on the order's timeline
        order_id = m.body.get("order_id")
        with tracer.start_as_current_span(f"check-back {m.topic}", context=context_of(m.body.get("traceparent")),
                                          attributes={"order_id": str(order_id)[:64] if order_id else "",
                                                      "message_id": str(m.id)}) as span:
            async with self._slots:
                answer, error = await self.ask(m)
            span.set_attribute("answer", answer.value)
            if error:
                span.set_attribute("error", error)
        self.answers[answer.value] += 1
        s = self.settings
        return await store.record_check(self.engine, self.me, m.id, answer, error,
                                        s.broker_check_interval_seconds, s.broker_max_checks)

    async def ask(self, m: Claimed) -> tuple[Decision, str | None]:
        try:
            await self.faults.hit("broker.check_back")
        except InjectedFault as exc:
            return Decision.UNKNOWN, f"no answer: the producer is unreachable ({exc})"
        try:
            response = await self.http.post(
                m.check_url, json={"id": str(m.id), "topic": m.topic, "body": m.body},
                headers={"Authorization": f"Bearer {self.settings.admin_token}"},
                timeout=self.settings.broker_check_timeout_seconds, follow_redirects=False)
        except httpx.HTTPError as exc:
            return Decision.UNKNOWN, f"no answer: {exc!r}"
        if response.status_code != 200:
            return Decision.UNKNOWN, f"HTTP {response.status_code}"
        try:
            decision = response.json().get("decision")
            return Decision(decision), None
        except (ValueError, AttributeError):
            return Decision.UNKNOWN, f"not a decision: {response.text[:200]!r}"


class Delivery:
    def __init__(self, engine: AsyncEngine, publisher: Publisher, settings: Settings, me: str,
                 faults: FaultInjector) -> None:
        self.engine, self.publisher, self.settings, self.me, self.faults = engine, publisher, settings, me, faults
        self.wake = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.publisher.wait_connected()
                done = await self.deliver_due()
                failures = 0
            except Exception as exc:
                if not is_transient(exc):
                    raise  # the process exits and its supervisor starts it again (broker/app.py)
                failures += 1  # the database is away or restarting (a restart raised SQLAlchemy's errors, which
                # stopped this loop for good before: committed messages were never delivered)
                log.warning("delivery paused: %r", exc)
                await asyncio.sleep(capped_backoff(failures, 0.5, 5.0))
                continue
            if done < BATCH:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.broker_poll_seconds)

    async def deliver_due(self) -> int:
        """Publish a batch of due messages together (their confirms pipelined), then mark the ones published
        DELIVERED in one statement."""
        claimed = await store.claim_deliveries(self.engine, self.me, self.settings.broker_lease_seconds, BATCH)
        published = await asyncio.gather(*(self.deliver(m) for m in claimed), return_exceptions=True)
        sent = [m.id for m, ok in zip(claimed, published, strict=True) if ok is True]
        if sent:  # whatever happened to the others: those published are marked, not published again
            await store.delivered(self.engine, self.me, sent)
        error = next((e for e in published if isinstance(e, BaseException)), None)
        if error is not None:  # the loop waits it out (a server away) or ends the process (a bug)
            raise error
        return len(claimed)

    async def deliver(self, m: Due) -> bool:
        """Publish one message; False (its claim given back, to retry later) when it was not."""
        try:
            await self.faults.hit("broker.before_deliver")
            await self.publisher.publish_raw(m.body.encode(), m.message_id or str(m.id), m.topic, m.topic,
                                             m.traceparent, m.order_id)
        except (BrokerUnavailable, InjectedFault) as exc:  # the world's fault: wait, count nothing
            await store.delivery_failed(self.engine, self.me, m.id, str(exc), 1.0, counted=False)
            return False
        except PublishRefused as exc:  # no queue takes this topic: retry, ever more slowly
            await store.delivery_failed(self.engine, self.me, m.id, str(exc),
                                        capped_backoff(m.attempts + 1, 1.0, 60.0), counted=True)
            return False
        return True
