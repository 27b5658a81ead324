"""The running parts of one service, available to routes as `request.app.state.rt`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cache.sharded import ShardedCache
from services.common.faults import FaultInjector
from services.common.settings import Settings
from services.messaging.connection import BrokerConnection
from services.messaging.consumer import Consumer
from services.messaging.publisher import Publisher
from services.messaging.relay import OutboxRelay


@dataclass
class Runtime:
    service: str
    settings: Settings
    engine: AsyncEngine
    broker: BrokerConnection
    publisher: Publisher
    consumer: Consumer
    relay: OutboxRelay
    faults: FaultInjector
    http: httpx.AsyncClient  # calls to the other services
    cache: ShardedCache
    stats: Counter[str] = field(default_factory=Counter)  # events applied, duplicates skipped
    pg: Any = None  # a participant's psycopg pools for its prepared transactions (services/runtime/prepared.py)


def runtime(request: Request) -> Runtime:
    return request.app.state.rt
