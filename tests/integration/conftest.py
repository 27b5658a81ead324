import uuid
from collections.abc import Mapping

import aio_pika
import pytest

from services.common.faults import FaultInjector
from services.messaging.connection import BrokerConnection
from services.messaging.topology import Topology


@pytest.fixture
def faults(tmp_path):
    return FaultInjector("order", tmp_path)


@pytest.fixture
async def topology(settings):
    """A factory of topologies with their own names (deleted afterwards), bound as the test says."""
    made: list[Topology] = []

    def make(subscriptions: Mapping[str, tuple[str, ...]]) -> Topology:
        made.append(Topology(f"{settings.bus_prefix}{uuid.uuid4().hex[:6]}.", dict(subscriptions)))
        return made[-1]

    yield make
    async with await aio_pika.connect(settings.amqp) as conn:
        channel = await conn.channel()
        for t in made:
            for service in t.services:
                await channel.queue_delete(t.queue(service))
                await channel.queue_delete(t.parking(service))
            await channel.exchange_delete(t.exchange)
            await channel.exchange_delete(t.dlx)


@pytest.fixture
async def connect(settings):
    """A factory of started broker connections (closed afterwards)."""
    opened: list[BrokerConnection] = []

    async def make(topology: Topology, name: str = "test") -> BrokerConnection:
        connection = BrokerConnection(settings.amqp, topology, name)
        connection.start()
        await connection.wait_connected(30)
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        await connection.close()
