"""Order rules, free of I/O: an order is PAID when stock is reserved and payment charged, CANCELLED once
both participants answered and either refused; a cancellation asks the other participant to compensate."""

from __future__ import annotations

PENDING, PAID, CANCELLED = "PENDING", "PAID", "CANCELLED"
RESERVED, REJECTED, RELEASED = "RESERVED", "REJECTED", "RELEASED"
CHARGED, FAILED, REFUNDED = "CHARGED", "FAILED", "REFUNDED"


def decide(stock_status: str, payment_status: str) -> str | None:
    """PAID or CANCELLED once both participants answered; None while one is still pending."""
    if PENDING in (stock_status, payment_status):
        return None
    return PAID if (stock_status, payment_status) == (RESERVED, CHARGED) else CANCELLED
