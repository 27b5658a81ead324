"""Admission control: POST /orders answers 429 with Retry-After while too many accepted orders are undecided.

An accepted order waits behind every order accepted before it (in the outbox, the queues, the coordinator),
so a backlog without a bound is a latency without a bound. The backlog counted is the orders still PENDING,
whatever their pattern: it is what the customer waits for, and a few orders held up by a fault do not close
the door while the rest flow. Counted every `SAMPLE_SECONDS`, plus the orders accepted since the count, so a
burst cannot slip in between two counts. `TXLAB_ADMISSION_MAX_PENDING=0` turns it off.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.messaging.failures import is_transient

log = logging.getLogger("txlab.admission")

SAMPLE_SECONDS = 0.1
RETRY_AFTER_SECONDS = 1  # Retry-After takes whole seconds

_PENDING = sa.text("SELECT count(*) FROM orders WHERE status = 'PENDING'")


class Overloaded(Exception):
    """Too many orders are undecided to accept another now."""


class Admission:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0  # at the last count
        self.accepted = 0  # since the last count
        self.refused = 0

    def admit(self) -> None:
        """Raise `Overloaded` when the backlog is at its bound; otherwise count the order as accepted."""
        if self.max_pending <= 0:
            return
        if self.pending + self.accepted >= self.max_pending:
            self.refused += 1
            raise Overloaded(f"{self.pending + self.accepted} orders are still being settled (at most "
                             f"{self.max_pending} may be); retry after {RETRY_AFTER_SECONDS} s")
        self.accepted += 1

    async def watch(self, engine: AsyncEngine) -> None:
        """Count the undecided orders until cancelled; while the database is away, keep the last count."""
        while self.max_pending > 0:
            if self.pending == 0 and self.accepted == 0:  # idle: nothing to count until an order comes
                await asyncio.sleep(SAMPLE_SECONDS)
                if self.accepted == 0:
                    continue
            try:
                async with engine.connect() as conn:
                    accepted = self.accepted
                    self.pending = await conn.scalar(_PENDING) or 0
                    self.accepted -= accepted  # those were committed before the count, or are in it
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.debug("cannot count undecided orders (%r)", exc)
            await asyncio.sleep(SAMPLE_SECONDS)
