"""Stock rules, free of I/O: an order's items are reserved all together or not at all."""

from __future__ import annotations

from dataclasses import dataclass

RESERVED, SOLD, RELEASED = "RESERVED", "SOLD", "RELEASED"


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


def shortages(available: dict[str, int], lines: list[Line]) -> list[str]:
    """Why the lines cannot all be reserved (empty when they can)."""
    missing = []
    for line in lines:
        have = available.get(line.sku)
        if have is None:
            missing.append(f"{line.sku}: unknown sku")
        elif have < line.qty:
            missing.append(f"{line.sku}: {line.qty} wanted, {have} available")
    return missing
