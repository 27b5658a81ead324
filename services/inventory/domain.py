"""Stock rules, free of I/O: an order's items are reserved all together or not at all; a paid order's
reservation is sold, a cancelled order's released.

Inventory answers an order.created before the order can be decided, so order.paid and order.cancelled always
find the reservation (or the rejection) made for it. An order.paid with nothing reserved, or an order.cancelled
after the sale, contradicts that and is refused: the message is parked where a person sees it, never acked."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.common.envelope import Emit


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    SOLD = "SOLD"
    RELEASED = "RELEASED"


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclass(frozen=True)
class Held:
    """What inventory holds for one order: nothing (None), or its lines in one status."""

    status: ReservationStatus | None = None
    lines: tuple[Line, ...] = ()


@dataclass(frozen=True)
class StockDecision:
    reserve: tuple[Line, ...] = ()  # take these from available into reserved
    settle: ReservationStatus | None = None  # move the reserved lines to SOLD or RELEASED
    emit: tuple[Emit, ...] = ()


class Contradiction(ValueError):
    """An event that cannot follow what inventory holds for its order."""


def shortages(available: dict[str, int], lines: list[Line] | tuple[Line, ...]) -> list[str]:
    """Why the lines cannot all be reserved (empty when they can)."""
    missing = []
    for line in lines:
        have = available.get(line.sku)
        if have is None:
            missing.append(f"{line.sku}: unknown sku")
        elif have < line.qty:
            missing.append(f"{line.sku}: {line.qty} wanted, {have} available")
    return missing


def decide(held: Held, event_type: str, wanted: tuple[Line, ...] = (),
           available: dict[str, int] | None = None) -> StockDecision:
    """What to do with stock on `event_type`, given what is held for the order (and, for order.created, the
    lines wanted and the stock available for them)."""
    if event_type == "order.created":
        if held.status is not None:  # already answered
            return StockDecision()
        missing = shortages(available or {}, wanted)
        if missing:
            reason = "insufficient stock: " + "; ".join(missing)
            return StockDecision(emit=(Emit("stock.rejected", {"reason": reason}),))
        return StockDecision(reserve=wanted, emit=(Emit("stock.reserved", {"items": [vars(w) for w in wanted]}),))
    if event_type == "order.paid":
        if held.status is ReservationStatus.RESERVED:
            return StockDecision(settle=ReservationStatus.SOLD)
        if held.status is ReservationStatus.SOLD:
            return StockDecision()
        raise Contradiction(f"order.paid for an order whose stock is {held.status or 'not reserved'}")
    if event_type == "order.cancelled":
        if held.status is ReservationStatus.RESERVED:
            return StockDecision(settle=ReservationStatus.RELEASED,
                                 emit=(Emit("stock.released", {"items": [vars(h) for h in held.lines]}),))
        if held.status is ReservationStatus.SOLD:
            raise Contradiction("order.cancelled for an order whose stock was sold")
        return StockDecision()  # rejected (nothing held), or released already
    raise ValueError(f"inventory does not handle {event_type}")
