"""Money rules, free of I/O: an order is charged once, when the balance covers it; a cancelled order's charge
is refunded once. A refused charge is recorded too (FAILED, with the reason), so the answer is given once."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.common.envelope import Emit


class PaymentStatus(StrEnum):
    CAPTURED = "CAPTURED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Payment:
    status: PaymentStatus
    customer_id: str
    amount_cents: int


@dataclass(frozen=True)
class PaymentDecision:
    record: PaymentStatus | None = None  # the payment's new status (None: unchanged)
    reason: str | None = None  # why a charge was refused
    balance_change: int = 0  # cents added to (refund) or taken from (charge) the customer's balance
    emit: tuple[Emit, ...] = ()


def charge_refusal(balance_cents: int | None, amount_cents: int) -> str | None:
    """Why `amount_cents` cannot be charged (None when it can)."""
    if balance_cents is None:
        return "unknown customer"
    if balance_cents < amount_cents:
        return f"insufficient balance: {amount_cents} cents due, {balance_cents} available"
    return None


def decide(payment: Payment | None, event_type: str, amount_cents: int = 0,
           balance_cents: int | None = None) -> PaymentDecision:
    """What to do with money on `event_type`, given the order's payment so far (and, for order.created, the
    amount due and the customer's balance)."""
    if event_type == "order.created":
        if payment is not None:  # already answered
            return PaymentDecision()
        refusal = charge_refusal(balance_cents, amount_cents)
        if refusal:
            return PaymentDecision(PaymentStatus.FAILED, refusal, emit=(Emit("payment.failed", {"reason": refusal}),))
        return PaymentDecision(PaymentStatus.CAPTURED, balance_change=-amount_cents,
                               emit=(Emit("payment.succeeded", {"amount_cents": amount_cents}),))
    if event_type == "order.cancelled":
        if payment is None or payment.status is not PaymentStatus.CAPTURED:
            return PaymentDecision()  # nothing was taken, or it was given back already
        return PaymentDecision(PaymentStatus.REFUNDED, balance_change=payment.amount_cents,
                               emit=(Emit("payment.refunded", {"amount_cents": payment.amount_cents}),))
    raise ValueError(f"payment does not handle {event_type}")
