"""The one message envelope that the outbox, the half-message broker and every relay publish."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.tracing import current_traceparent, new_traceparent, trace_id_of


class InvalidEnvelope(ValueError):
    """A message body that is not a well-formed envelope: a poison message."""


def _traceparent() -> str:
    """The current span's (a request's, a message's): the event joins its trace. Outside any, a new trace."""
    return current_traceparent() or new_traceparent()


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    order_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    traceparent: str = Field(default_factory=_traceparent)
    payload: dict[str, Any] = Field(default_factory=dict)

    def caused(self, type: str, payload: dict[str, Any]) -> Envelope:
        """A new event caused by this one: same order and trace, causation = this message. Its parent span is
        the one handling this message, when that one is current."""
        here = current_traceparent()
        parent = here if here and trace_id_of(here) == trace_id_of(self.traceparent) else self.traceparent
        return Envelope(type=type, order_id=self.order_id, causation_id=self.message_id, traceparent=parent,
                        payload=payload)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Envelope:
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidEnvelope(str(exc)) from exc


@dataclass(frozen=True)
class Emit:
    """An event a business decision asks for; the use case publishes it as an envelope caused by the event
    it is handling (same order, same trace)."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
