"""Pruning: SENT outbox rows and inbox rows live for the retention, then go.

The retention must be longer than any redelivery window: an inbox row pruned while a copy of its message can
still arrive would let that copy be applied a second time. Settings refuse less than an hour; the default is
a week.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.messaging.inbox import INBOX
from services.messaging.outbox import OUTBOX, OutboxStatus, seconds

BATCH = 5_000  # rows deleted per statement: short transactions, no long locks


async def prune(engine: AsyncEngine, retention_hours: float) -> dict[str, int]:
    """Delete SENT outbox rows and inbox rows older than the retention; return how many of each."""
    cutoff = sa.func.now() - seconds(retention_hours * 3600)
    removed = {"outbox": 0, "inbox": 0}
    targets = {
        "outbox": (OUTBOX, OUTBOX.c.id, sa.and_(OUTBOX.c.status == OutboxStatus.SENT, OUTBOX.c.sent_at < cutoff)),
        "inbox": (INBOX, INBOX.c.message_id, INBOX.c.received_at < cutoff),
    }
    for name, (table, key, old) in targets.items():
        while True:
            batch = sa.select(key).where(old).limit(BATCH).scalar_subquery()
            async with engine.begin() as conn:
                n = (await conn.execute(sa.delete(table).where(key.in_(batch)))).rowcount
            removed[name] += n
            if n < BATCH:
                break
    return removed
