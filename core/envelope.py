"""The platform's event envelope `{eventId, eventType, timestamp, version, payload}`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec


class Envelope(msgspec.Struct, rename="camel", kw_only=True):
    event_id: uuid.UUID
    event_type: str
    timestamp: datetime
    version: str = "1.0"
    payload: Any


def routing_key_to_event_type(routing_key: str) -> str:
    """`lomash.analytics.event.tracked` -> `analytics-event-tracked`, the platform's spelling."""
    return routing_key.removeprefix("lomash.").replace(".", "-")
