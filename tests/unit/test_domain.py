from services.inventory.domain import Line, shortages
from services.order.domain import CANCELLED, CHARGED, FAILED, PAID, PENDING, REJECTED, RESERVED, decide
from services.payment.domain import charge_refusal


def test_order_waits_for_both_participants():
    assert decide(RESERVED, PENDING) is None
    assert decide(PENDING, CHARGED) is None


def test_order_is_paid_only_when_stock_reserved_and_payment_charged():
    assert decide(RESERVED, CHARGED) == PAID


def test_any_refusal_cancels_the_order():
    assert decide(REJECTED, CHARGED) == CANCELLED
    assert decide(RESERVED, FAILED) == CANCELLED
    assert decide(REJECTED, FAILED) == CANCELLED


def test_reservation_is_all_or_nothing_and_names_each_shortage():
    available = {"a": 5, "b": 1}
    assert shortages(available, [Line("a", 5), Line("b", 1)]) == []
    assert shortages(available, [Line("a", 6), Line("b", 1), Line("z", 1)]) == [
        "a: 6 wanted, 5 available", "z: unknown sku"]


def test_charge_needs_a_known_customer_with_enough_balance():
    assert charge_refusal(1000, 1000) is None
    assert charge_refusal(999, 1000).startswith("insufficient balance")
    assert charge_refusal(None, 1) == "unknown customer"
