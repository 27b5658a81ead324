"""The broker through its own failures and RabbitMQ's: a kill -9 between commit and delivery, and an outage
that only delays delivery."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.common.faults import parse_spec
from services.common.settings import Settings
from services.supervisor import Supervisor
from tests import servers
from tests.conftest import destroy, free_port, isolated_settings
from tests.integration.broker.conftest import declare_topology, half
from tests.polling import eventually


async def test_a_broker_killed_between_commit_and_delivery_delivers_after_its_restart(broker, broker_process,
                                                                                      producer, received):
    arming = parse_spec("broker.before_deliver=delay:3000,times=1").request() | {"id": "kill-window"}
    assert (await broker.post("/internal/faults", json=arming)).status_code == 201
    mid = (await broker.post("/messages", json=half(producer, "k"))).json()["id"]
    assert (await broker.post(f"/messages/{mid}/commit")).status_code == 200
    await asyncio.sleep(1.0)  # the delivery is now held just before publishing
    assert received.bodies == []
    await broker_process.kill("broker")  # kill -9; the supervisor restarts it
    await broker_process.wait_healthy(60)
    # the restarted process takes back what it had claimed at once, and delivers it
    assert await eventually(lambda: received.ids() == {"k": 1}, within=30, what="delivery after the restart")
    # marked DELIVERED once its batch's publishes are confirmed: a moment after the consumer has it
    assert await eventually(lambda: state_is(broker, mid, "DELIVERED"), within=10, what="DELIVERED")


async def state_is(broker: httpx.AsyncClient, mid: str, state: str) -> bool:
    return (await broker.get(f"/messages/{mid}")).json()["state"] == state


@pytest.fixture
def local_settings(tmp_path):
    """Settings on the machine's own servers (the outage acts on those), short check-back timings."""
    local = Settings()
    s = isolated_settings({"pg": local.pg, "amqp": local.amqp, "cache_nodes": local.cache_nodes}, tmp_path)
    s = s.model_copy(update={"broker_port": free_port(), "broker_poll_seconds": 0.1})
    yield s
    servers.ensure_rabbitmq_running()
    destroy(s)


@pytest.mark.stops_servers
async def test_a_rabbitmq_outage_delays_delivery_and_never_counts_or_parks(local_settings, producer):
    await declare_topology(local_settings)
    async with Supervisor(local_settings, names=("broker",)), httpx.AsyncClient(
            base_url=local_settings.url("broker"), timeout=10.0,
            headers={"Authorization": f"Bearer {local_settings.admin_token}"}) as broker:
        await asyncio.to_thread(servers.stop_rabbitmq)
        try:
            ids = [(await broker.post("/messages", json=half(producer, n))).json()["id"] for n in range(5)]
            for mid in ids:
                assert (await broker.post(f"/messages/{mid}/commit")).status_code == 200
            await asyncio.sleep(10.0)  # delivery attempts meet a closed port all along
            states = {(await broker.get(f"/messages/{m}")).json()["state"] for m in ids}
            assert states == {"COMMITTED"}
        finally:
            await asyncio.to_thread(servers.start_rabbitmq)

        async def all_delivered() -> bool:
            return {(await broker.get(f"/messages/{m}")).json()["state"] for m in ids} == {"DELIVERED"}

        assert await eventually(all_delivered, within=60, what="delivery after RabbitMQ returned")
        for mid in ids:
            message = (await broker.get(f"/messages/{mid}")).json()
            assert message["delivery_attempts"] == 0  # the outage counted no attempt
            assert "PARKED" not in [h.get("to") for h in message["history"]]
