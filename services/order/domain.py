"""Order rules, free of I/O: each participant's answer is recorded; once both answered, the order is PAID if
stock is reserved and payment captured, else CANCELLED, and the decision is announced.

Answers only move forward (PENDING -> RESERVED | REJECTED -> RELEASED; PENDING -> CAPTURED | FAILED ->
REFUNDED): a duplicate, or an answer overtaken by a later one (the relay publishes a batch concurrently, so
stock.released can arrive before stock.reserved), changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from services.common.envelope import Emit


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    CANCELLED = "CANCELLED"


class StockAnswer(StrEnum):
    PENDING = "PENDING"
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"


class PaymentAnswer(StrEnum):
    PENDING = "PENDING"
    CAPTURED = "CAPTURED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"


# each event the order service consumes: which participant answered, and what
ANSWERS: dict[str, tuple[str, StockAnswer | PaymentAnswer]] = {
    "stock.reserved": ("stock", StockAnswer.RESERVED),
    "stock.rejected": ("stock", StockAnswer.REJECTED),
    "stock.released": ("stock", StockAnswer.RELEASED),
    "payment.succeeded": ("payment", PaymentAnswer.CAPTURED),
    "payment.failed": ("payment", PaymentAnswer.FAILED),
    "payment.refunded": ("payment", PaymentAnswer.REFUNDED),
}
_STEP = {"PENDING": 0, "RESERVED": 1, "REJECTED": 1, "CAPTURED": 1, "FAILED": 1, "RELEASED": 2, "REFUNDED": 2}


@dataclass(frozen=True)
class Order:
    status: OrderStatus = OrderStatus.PENDING
    stock: StockAnswer = StockAnswer.PENDING
    payment: PaymentAnswer = PaymentAnswer.PENDING
    reason: str | None = None


@dataclass(frozen=True)
class Decision:
    order: Order
    emit: tuple[Emit, ...] = ()


class Contradiction(ValueError):
    """An answer that cannot follow the order's state (a compensation for a PAID order)."""


def decide(order: Order, event_type: str, reason: str | None = None) -> Decision:
    """The order after `event_type` (a participant's answer), and the event announcing a decision."""
    participant, answer = ANSWERS[event_type]
    if order.status is OrderStatus.PAID and answer in (StockAnswer.RELEASED, PaymentAnswer.REFUNDED):
        raise Contradiction(f"{event_type} for a PAID order: only a cancelled order is compensated")
    if _STEP[answer] <= _STEP[getattr(order, participant)]:
        return Decision(order)
    reasons = "; ".join(r for r in (order.reason, reason) if r) or None
    order = replace(order, **{participant: answer}, reason=reasons)
    if order.status is not OrderStatus.PENDING or StockAnswer.PENDING in (order.stock, order.payment):
        return Decision(order)
    if (order.stock, order.payment) == (StockAnswer.RESERVED, PaymentAnswer.CAPTURED):
        return Decision(replace(order, status=OrderStatus.PAID), (Emit("order.paid"),))
    return Decision(replace(order, status=OrderStatus.CANCELLED),
                    (Emit("order.cancelled", {"reason": order.reason}),))
