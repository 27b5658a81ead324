import uuid

import pytest

from services.common.envelope import Envelope, InvalidEnvelope
from services.messaging.relay import backoff_seconds
from services.seed import SeedPlan


def test_envelope_round_trips_through_bytes():
    e = Envelope(type="order.created", order_id=uuid.uuid4(), payload={"items": [{"sku": "a", "qty": 1}]})
    assert Envelope.from_bytes(e.to_bytes()) == e


def test_caused_event_keeps_order_and_trace_and_points_at_its_cause():
    cause = Envelope(type="order.created", order_id=uuid.uuid4())
    effect = cause.caused("stock.reserved", {"items": []})
    assert (effect.order_id, effect.traceparent, effect.causation_id) == (cause.order_id, cause.traceparent,
                                                                         cause.message_id)
    assert effect.message_id != cause.message_id


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"type": 3}', b'{"type": "x", "message_id": "nope"}'])
def test_malformed_bodies_are_poison(body):
    with pytest.raises(InvalidEnvelope):
        Envelope.from_bytes(body)


def test_relay_backoff_doubles_and_is_capped():
    assert [backoff_seconds(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_seconds(30) == 60.0


def test_seed_is_reproducible_and_has_scarce_products_and_poor_customers():
    plan = SeedPlan(products=200, customers=300)
    assert plan.catalogue() == SeedPlan(products=200, customers=300).catalogue()
    assert plan.catalogue() != SeedPlan(products=200, customers=300, seed=7).catalogue()
    assert any(stock == plan.scarce_stock for *_, stock in plan.catalogue())
    assert any(bal == plan.poor_balance_cents for *_, bal in plan.customer_rows())
