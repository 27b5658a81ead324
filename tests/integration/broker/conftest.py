"""A real broker process (or two) on isolated databases and queues, a producer that answers check-backs as the
test says, and a queue that shows what reached RabbitMQ."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest
from aiohttp import web

from services.messaging.connection import BrokerConnection
from services.messaging.topology import topology_of
from services.supervisor import Supervisor
from tests.conftest import free_port

TOPIC = "order.created"


@pytest.fixture
def broker_settings(settings):
    """Short timings: a check-back 0.3 s after a message is sent, then every 0.3 s, parked after 3."""
    return settings.model_copy(update={
        "broker_port": free_port(), "broker_immunity_seconds": 0.3, "broker_check_interval_seconds": 0.3,
        "broker_max_checks": 3, "broker_poll_seconds": 0.1, "broker_check_timeout_seconds": 1.0})


async def _started(settings) -> Supervisor:
    sup = Supervisor(settings, names=("broker",))
    await sup.start()
    return sup


async def declare_topology(settings) -> None:
    """The exchange and the services' queues exist before anything is published."""
    connection = BrokerConnection(settings.amqp, topology_of(settings), "test-setup")
    connection.start()
    await connection.wait_connected(30)
    await connection.close()


@pytest.fixture
async def broker_process(broker_settings) -> AsyncIterator[Supervisor]:
    """One broker process under a supervisor (which restarts it if it dies)."""
    await declare_topology(broker_settings)
    sup = await _started(broker_settings)
    try:
        yield sup
    finally:
        await sup.stop()


@pytest.fixture
async def broker(broker_settings, broker_process) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the broker process, with the admin token."""
    async with httpx.AsyncClient(base_url=broker_settings.url("broker"), timeout=10.0,
                                 headers={"Authorization": f"Bearer {broker_settings.admin_token}"}) as c:
        yield c


@pytest.fixture
async def second_broker(broker_settings, broker) -> AsyncIterator[Supervisor]:
    other = broker_settings.model_copy(update={"broker_port": free_port()})
    sup = await _started(other)
    try:
        yield sup
    finally:
        await sup.stop()


class Producer:
    """An HTTP server on loopback answering check-backs: `answers[id]`, else `default`; counts the checks."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.default = "UNKNOWN"
        self.checks: Counter[str] = Counter()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def check_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/check"

    async def _check(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.checks[body["id"]] += 1
        return web.json_response({"decision": self.answers.get(body["id"], self.default)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/check", self._check)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def producer() -> AsyncIterator[Producer]:
    p = Producer()
    await p.start()
    yield p
    await p.stop()


class Received:
    """A queue of the test's own bound to TOPIC: every message RabbitMQ routed there."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def ids(self) -> Counter[str]:
        return Counter(b["n"] for b in self.bodies if "n" in b)


@pytest.fixture
async def received(broker_settings) -> AsyncIterator[Received]:
    got = Received()
    names = topology_of(broker_settings)
    conn = await aio_pika.connect(broker_settings.amqp)
    channel = await conn.channel()
    exchange = await channel.get_exchange(names.exchange)
    queue = await channel.declare_queue(f"{broker_settings.bus_prefix}test-{uuid.uuid4().hex[:6]}", exclusive=True)
    await queue.bind(exchange, TOPIC)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            got.bodies.append(json.loads(message.body))

    await queue.consume(on_message)
    yield got
    await conn.close()


def half(producer: Producer, n: int | str = 0, **extra) -> dict:
    return {"topic": TOPIC, "body": {"n": str(n), **extra}, "producer": "order", "check_url": producer.check_url}
