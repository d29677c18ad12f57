"""The platform's event envelope `{eventId, eventType, timestamp, version, payload}`, for every
message we publish (`Envelope[SomePayload]` where the payload is typed)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

P = TypeVar("P")


class Envelope(msgspec.Struct, Generic[P], rename="camel", kw_only=True, gc=False):
    event_id: uuid.UUID
    event_type: str
    timestamp: datetime
    version: str = "1.0"
    payload: P


AnyEnvelope = Envelope[Any]


def routing_key_to_event_type(routing_key: str) -> str:
    """`lomash.analytics.event.tracked` -> `analytics-event-tracked`, the platform's spelling."""
    return routing_key.removeprefix("lomash.").replace(".", "-")
