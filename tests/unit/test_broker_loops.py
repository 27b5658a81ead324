"""The broker's delivery and check-back loops wait out a database that restarts (SQLAlchemy's errors included:
they once stopped the delivery loop for good, and committed half messages were never delivered), and stop on an
error of their own, for the process's watchdog to restart it."""

import asyncio

import pytest
import sqlalchemy as sa

from broker import store, workers
from services.common.faults import FaultInjector
from services.common.settings import Settings


class Connected:
    async def wait_connected(self) -> None:
        return None


def shutting_down() -> Exception:
    return sa.exc.OperationalError("SELECT", {}, Exception("FATAL: the database system is shutting down"))


@pytest.mark.parametrize("loop, claims", [("delivery", "claim_deliveries"), ("checkback", "claim_checks")])
async def test_a_loop_waits_out_a_database_restart(monkeypatch, tmp_path, loop, claims):
    calls = 0

    async def claim(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise shutting_down()
        return []

    monkeypatch.setattr(store, claims, claim)
    settings = Settings(broker_poll_seconds=0.05)
    faults = FaultInjector("broker", tmp_path)
    worker = (workers.Delivery(None, Connected(), settings, "me", faults) if loop == "delivery"
              else workers.CheckBack(None, None, settings, "me", faults))
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        if calls >= 3:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "the loop stopped"
    assert calls >= 3
    task.cancel()


async def test_a_loop_stops_on_an_error_of_its_own(monkeypatch, tmp_path):
    async def claim(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(store, "claim_deliveries", claim)
    worker = workers.Delivery(None, Connected(), Settings(), "me", FaultInjector("broker", tmp_path))
    with pytest.raises(ValueError, match="a bug"):
        await asyncio.wait_for(worker.run(), 5)


async def test_a_batch_marks_what_it_published_whatever_befell_the_others(monkeypatch, tmp_path):
    """One message of a batch failing in an unexpected way (here: giving its claim back fails as the database
    goes away) must not leave the others, published already, to be published again once their claims run out."""
    import uuid

    from services.messaging.publisher import BrokerUnavailable

    batch = [store.Due(uuid.uuid4(), "t", "{}", None, None, None, 0) for _ in range(3)]
    marked: list[list] = []

    class Publisher(Connected):
        async def publish_raw(self, body, message_id, type, routing_key, traceparent=None, order_id=None):
            if message_id == str(batch[1].id):
                raise BrokerUnavailable("channel closed")

    async def claim(*args, **kwargs):
        return batch

    async def delivery_failed(*args, **kwargs):
        raise ConnectionResetError("the database connection was lost")

    async def delivered(engine, me, ids):
        marked.append(ids)
        return len(ids)

    monkeypatch.setattr(store, "claim_deliveries", claim)
    monkeypatch.setattr(store, "delivery_failed", delivery_failed)
    monkeypatch.setattr(store, "delivered", delivered)
    worker = workers.Delivery(None, Publisher(), Settings(), "me", FaultInjector("broker", tmp_path))
    with pytest.raises(ConnectionResetError):
        await worker.deliver_due()
    assert marked == [[batch[0].id, batch[2].id]]
