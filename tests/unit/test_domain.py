"""The business rules of order, inventory and payment, with no database and no broker: every event in every
state (duplicates and events overtaken by later ones included), then each use case over in-memory fakes."""

import uuid
from dataclasses import dataclass, field

import pytest

from services.common.envelope import Emit, Envelope
from services.inventory import domain as stock
from services.inventory.domain import Held, Line, ReservationStatus
from services.inventory.handlers import apply_stock_event
from services.order import domain as orders
from services.order.domain import Order, OrderStatus, PaymentAnswer, StockAnswer
from services.order.handlers import record_answer
from services.payment import domain as money
from services.payment.domain import Payment, PaymentStatus
from services.payment.handlers import apply_payment_event

S, P = StockAnswer, PaymentAnswer
PENDING, PAID, CANCELLED = OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.CANCELLED

# --- order: (stock, payment, status) before, event -> (stock, payment, status) after, events announced ---------

ORDER_TABLE = [
    # first answers
    ((S.PENDING, P.PENDING, PENDING), "stock.reserved", (S.RESERVED, P.PENDING, PENDING), []),
    ((S.PENDING, P.PENDING, PENDING), "stock.rejected", (S.REJECTED, P.PENDING, PENDING), []),
    ((S.PENDING, P.PENDING, PENDING), "payment.succeeded", (S.PENDING, P.CAPTURED, PENDING), []),
    ((S.PENDING, P.PENDING, PENDING), "payment.failed", (S.PENDING, P.FAILED, PENDING), []),
    # second answers decide
    ((S.RESERVED, P.PENDING, PENDING), "payment.succeeded", (S.RESERVED, P.CAPTURED, PAID), ["order.paid"]),
    ((S.PENDING, P.CAPTURED, PENDING), "stock.reserved", (S.RESERVED, P.CAPTURED, PAID), ["order.paid"]),
    ((S.RESERVED, P.PENDING, PENDING), "payment.failed", (S.RESERVED, P.FAILED, CANCELLED), ["order.cancelled"]),
    ((S.PENDING, P.CAPTURED, PENDING), "stock.rejected", (S.REJECTED, P.CAPTURED, CANCELLED), ["order.cancelled"]),
    ((S.REJECTED, P.PENDING, PENDING), "payment.failed", (S.REJECTED, P.FAILED, CANCELLED), ["order.cancelled"]),
    ((S.PENDING, P.FAILED, PENDING), "stock.reserved", (S.RESERVED, P.FAILED, CANCELLED), ["order.cancelled"]),
    # compensations after a cancellation
    ((S.RESERVED, P.FAILED, CANCELLED), "stock.released", (S.RELEASED, P.FAILED, CANCELLED), []),
    ((S.REJECTED, P.CAPTURED, CANCELLED), "payment.refunded", (S.REJECTED, P.REFUNDED, CANCELLED), []),
    # duplicates change nothing and announce nothing twice
    ((S.RESERVED, P.PENDING, PENDING), "stock.reserved", (S.RESERVED, P.PENDING, PENDING), []),
    ((S.RESERVED, P.CAPTURED, PAID), "payment.succeeded", (S.RESERVED, P.CAPTURED, PAID), []),
    ((S.RESERVED, P.CAPTURED, PAID), "stock.reserved", (S.RESERVED, P.CAPTURED, PAID), []),
    ((S.REJECTED, P.FAILED, CANCELLED), "payment.failed", (S.REJECTED, P.FAILED, CANCELLED), []),
    ((S.RELEASED, P.FAILED, CANCELLED), "stock.released", (S.RELEASED, P.FAILED, CANCELLED), []),
    # out of order: an answer overtaken by a later one of the same participant changes nothing
    ((S.RELEASED, P.FAILED, CANCELLED), "stock.reserved", (S.RELEASED, P.FAILED, CANCELLED), []),
    ((S.REJECTED, P.REFUNDED, CANCELLED), "payment.succeeded", (S.REJECTED, P.REFUNDED, CANCELLED), []),
    # a decided order is never decided again; a conflicting late answer changes nothing
    ((S.REJECTED, P.FAILED, CANCELLED), "stock.reserved", (S.REJECTED, P.FAILED, CANCELLED), []),
    ((S.REJECTED, P.FAILED, CANCELLED), "stock.rejected", (S.REJECTED, P.FAILED, CANCELLED), []),
    ((S.RESERVED, P.CAPTURED, PAID), "stock.rejected", (S.RESERVED, P.CAPTURED, PAID), []),
    ((S.RESERVED, P.CAPTURED, PAID), "payment.failed", (S.RESERVED, P.CAPTURED, PAID), []),
    # a compensation that overtook the decision's other answer: recorded, and the order can only be cancelled
    ((S.RESERVED, P.PENDING, PENDING), "stock.released", (S.RELEASED, P.PENDING, PENDING), []),
    ((S.PENDING, P.CAPTURED, PENDING), "payment.refunded", (S.PENDING, P.REFUNDED, PENDING), []),
    ((S.RELEASED, P.PENDING, PENDING), "payment.succeeded", (S.RELEASED, P.CAPTURED, CANCELLED),
     ["order.cancelled"]),
]
CONTRADICTIONS = [((S.RESERVED, P.CAPTURED, PAID), "stock.released"),
                  ((S.RESERVED, P.CAPTURED, PAID), "payment.refunded")]


@pytest.mark.parametrize("before, event, after, announced", ORDER_TABLE,
                         ids=[f"{b[0]}/{b[1]}/{b[2]}+{e}" for b, e, _, _ in ORDER_TABLE])
def test_order_decision(before, event, after, announced):
    decision = orders.decide(Order(before[2], before[0], before[1]), event)
    assert (decision.order.stock, decision.order.payment, decision.order.status) == after
    assert [e.type for e in decision.emit] == announced


@pytest.mark.parametrize("before, event", CONTRADICTIONS, ids=[e for _, e in CONTRADICTIONS])
def test_a_compensation_for_a_paid_order_is_a_contradiction_not_a_silent_ack(before, event):
    with pytest.raises(orders.Contradiction):
        orders.decide(Order(before[2], before[0], before[1]), event)


def test_a_cancellation_announces_every_reason_given():
    order = orders.decide(Order(), "stock.rejected", "insufficient stock: sku-1").order
    decision = orders.decide(order, "payment.failed", "insufficient balance")
    assert decision.emit == (Emit("order.cancelled", {"reason": "insufficient stock: sku-1; insufficient balance"}),)


# --- inventory: what is held, event -> reserve / settle, events announced ------------------------------------

A, B = Line("a", 2), Line("b", 1)
RESERVED = Held(ReservationStatus.RESERVED, (A, B))
SOLD = Held(ReservationStatus.SOLD, (A, B))
RELEASED = Held(ReservationStatus.RELEASED, (A, B))
PLENTY, SHORT = {"a": 5, "b": 1}, {"a": 1, "b": 1}

STOCK_TABLE = [
    (Held(), "order.created", PLENTY, (A, B), None, ["stock.reserved"]),
    (Held(), "order.created", SHORT, (), None, ["stock.rejected"]),
    (RESERVED, "order.created", PLENTY, (), None, []),  # already answered
    (SOLD, "order.created", PLENTY, (), None, []),
    (RELEASED, "order.created", PLENTY, (), None, []),
    (RESERVED, "order.paid", None, (), ReservationStatus.SOLD, []),
    (SOLD, "order.paid", None, (), None, []),  # duplicate
    (RESERVED, "order.cancelled", None, (), ReservationStatus.RELEASED, ["stock.released"]),
    (Held(), "order.cancelled", None, (), None, []),  # it was rejected: nothing to release
    (RELEASED, "order.cancelled", None, (), None, []),  # duplicate
]


@pytest.mark.parametrize("held, event, available, reserve, settle, announced", STOCK_TABLE,
                         ids=[f"{h.status}+{e}" for h, e, *_ in STOCK_TABLE])
def test_stock_decision(held, event, available, reserve, settle, announced):
    decision = stock.decide(held, event, (A, B), available)
    assert (decision.reserve, decision.settle, [e.type for e in decision.emit]) == (reserve, settle, announced)


STOCK_CONTRADICTIONS = [(Held(), "order.paid"), (RELEASED, "order.paid"), (SOLD, "order.cancelled")]


@pytest.mark.parametrize("held, event", STOCK_CONTRADICTIONS, ids=[f"{h.status}+{e}" for h, e in STOCK_CONTRADICTIONS])
def test_stock_events_that_contradict_what_is_held_are_refused_not_silently_acked(held, event):
    with pytest.raises(stock.Contradiction):
        stock.decide(held, event)


def test_reservation_is_all_or_nothing_and_names_each_shortage():
    assert stock.shortages({"a": 5, "b": 1}, [Line("a", 5), Line("b", 1)]) == []
    assert stock.shortages({"a": 5, "b": 1}, [Line("a", 6), Line("b", 1), Line("z", 1)]) == [
        "a: 6 wanted, 5 available", "z: unknown sku"]


# --- payment: the payment so far, event -> new status, balance change, events announced ----------------------

CAPTURED = Payment(PaymentStatus.CAPTURED, "c1", 700)
FAILED = Payment(PaymentStatus.FAILED, "c1", 700)
REFUNDED = Payment(PaymentStatus.REFUNDED, "c1", 700)

PAYMENT_TABLE = [
    (None, "order.created", 1000, PaymentStatus.CAPTURED, -700, ["payment.succeeded"]),
    (None, "order.created", 699, PaymentStatus.FAILED, 0, ["payment.failed"]),
    (None, "order.created", None, PaymentStatus.FAILED, 0, ["payment.failed"]),  # unknown customer
    (CAPTURED, "order.created", 1000, None, 0, []),  # already answered
    (FAILED, "order.created", 1000, None, 0, []),
    (REFUNDED, "order.created", 1000, None, 0, []),
    (CAPTURED, "order.cancelled", None, PaymentStatus.REFUNDED, 700, ["payment.refunded"]),
    (FAILED, "order.cancelled", None, None, 0, []),  # nothing was taken
    (None, "order.cancelled", None, None, 0, []),
    (REFUNDED, "order.cancelled", None, None, 0, []),  # duplicate: refunded once
]


@pytest.mark.parametrize("payment, event, balance, record, change, announced", PAYMENT_TABLE,
                         ids=[f"{p and p.status}+{e}+{b}" for p, e, b, *_ in PAYMENT_TABLE])
def test_payment_decision(payment, event, balance, record, change, announced):
    decision = money.decide(payment, event, 700, balance)
    assert (decision.record, decision.balance_change, [e.type for e in decision.emit]) == (record, change, announced)


# --- the use cases over in-memory fakes ------------------------------------------------------------------------

@dataclass
class FakeOutbox:
    emitted: list[Envelope] = field(default_factory=list)
    stale_keys: set[str] = field(default_factory=set)

    async def emit(self, envelope: Envelope) -> None:
        self.emitted.append(envelope)


@dataclass
class FakeOrders:
    rows: dict[uuid.UUID, Order] = field(default_factory=dict)

    async def lock(self, order_id):
        return self.rows.get(order_id)

    async def save(self, order_id, order):
        self.rows[order_id] = order


@dataclass
class FakeStock:
    available: dict[str, int]
    reserved: dict[str, int] = field(default_factory=dict)
    sold: dict[str, int] = field(default_factory=dict)
    holds: dict[uuid.UUID, Held] = field(default_factory=dict)

    async def lock_available(self, skus):
        return {s: self.available[s] for s in skus if s in self.available}

    async def held(self, order_id):
        return self.holds.get(order_id, Held())

    async def reserve(self, order_id, lines):
        for line in lines:
            self.available[line.sku] -= line.qty
            self.reserved[line.sku] = self.reserved.get(line.sku, 0) + line.qty
        self.holds[order_id] = Held(ReservationStatus.RESERVED, lines)

    async def settle(self, order_id, lines, to):
        into = self.sold if to is ReservationStatus.SOLD else self.available
        for line in lines:
            self.reserved[line.sku] -= line.qty
            into[line.sku] = into.get(line.sku, 0) + line.qty
        self.holds[order_id] = Held(to, lines)


@dataclass
class FakeMoney:
    balances: dict[str, int]
    payments: dict[uuid.UUID, Payment] = field(default_factory=dict)

    async def lock_balance(self, customer_id):
        return self.balances.get(customer_id)

    async def payment(self, order_id):
        return self.payments.get(order_id)

    async def record(self, order_id, payment, reason):
        self.payments[order_id] = payment

    async def add_to_balance(self, customer_id, cents):
        self.balances[customer_id] += cents


def created(order_id, total=700, items=(("a", 2), ("b", 1))) -> Envelope:
    return Envelope(type="order.created", order_id=order_id, payload={
        "customer_id": "c1", "total_cents": total, "items": [{"sku": s, "qty": q} for s, q in items]})


async def test_a_paid_order_sells_its_stock_and_keeps_its_charge():
    order_id = uuid.uuid4()
    shop, bank, book = FakeStock({"a": 5, "b": 1}), FakeMoney({"c1": 1000}), FakeOrders({order_id: Order()})
    to_order = FakeOutbox()
    event = created(order_id)
    await apply_stock_event(shop, to_order, event)
    await apply_payment_event(bank, to_order, event)
    announced = FakeOutbox()
    for answer in to_order.emitted:
        await record_answer(book, announced, answer)
    assert [e.type for e in announced.emitted] == ["order.paid"]
    await apply_stock_event(shop, FakeOutbox(), announced.emitted[0])
    assert (shop.available, shop.reserved, shop.sold) == ({"a": 3, "b": 0}, {"a": 0, "b": 0}, {"a": 2, "b": 1})
    assert bank.balances == {"c1": 300} and book.rows[order_id].status is PAID


async def test_a_refused_charge_cancels_the_order_and_gives_the_stock_back():
    order_id = uuid.uuid4()
    shop, bank, book = FakeStock({"a": 5, "b": 1}), FakeMoney({"c1": 100}), FakeOrders({order_id: Order()})
    answers, announced = FakeOutbox(), FakeOutbox()
    await apply_stock_event(shop, answers, created(order_id))
    await apply_payment_event(bank, answers, created(order_id))
    for answer in answers.emitted:
        await record_answer(book, announced, answer)
    (cancelled,) = announced.emitted
    assert cancelled.type == "order.cancelled" and "insufficient balance" in cancelled.payload["reason"]
    compensations = FakeOutbox()
    for _ in range(2):  # delivered twice: compensated once
        await apply_stock_event(shop, compensations, cancelled)
        await apply_payment_event(bank, compensations, cancelled)
    assert [e.type for e in compensations.emitted] == ["stock.released"]
    assert shop.available == {"a": 5, "b": 1} and bank.balances == {"c1": 100}
    assert book.rows[order_id].status is CANCELLED


async def test_an_answer_for_an_unknown_order_is_the_messages_own_failure():
    with pytest.raises(LookupError, match="unknown order"):
        await record_answer(FakeOrders(), FakeOutbox(), Envelope(type="stock.reserved", order_id=uuid.uuid4()))


def test_the_tables_cover_every_event_in_every_state():
    seen = {(before[2], event) for before, event, *_ in [*ORDER_TABLE, *CONTRADICTIONS]}
    assert seen == {(status, event) for status in OrderStatus for event in orders.ANSWERS}
    assert {(h.status, e) for h, e, *_ in [*STOCK_TABLE, *STOCK_CONTRADICTIONS]} == {
        (status, event) for status in (None, *ReservationStatus)
        for event in ("order.created", "order.paid", "order.cancelled")}
    assert {(p and p.status, e) for p, e, *_ in PAYMENT_TABLE} == {
        (status, event) for status in (None, *PaymentStatus) for event in ("order.created", "order.cancelled")}
