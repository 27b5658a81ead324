"""Money rules, free of I/O: a charge succeeds only when the balance covers it."""

from __future__ import annotations

CAPTURED, REFUNDED, FAILED = "CAPTURED", "REFUNDED", "FAILED"


def charge_refusal(balance_cents: int | None, amount_cents: int) -> str | None:
    """Why `amount_cents` cannot be charged (None when it can)."""
    if balance_cents is None:
        return "unknown customer"
    if balance_cents < amount_cents:
        return f"insufficient balance: {amount_cents} cents due, {balance_cents} available"
    return None
