"""Turns a validated tracking event into the row stored for it, stamped with server facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from core.ids import new_event_id
from ingest.rows import TrackingRow
from ingest.schema import TrackingEvent


@dataclass(frozen=True, slots=True)
class Context:
    """What the request tells us about every event in it."""

    received_at: datetime
    client_ip: str


def to_row(event: TrackingEvent, ctx: Context) -> TrackingRow:
    timestamp = event.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    meta = event.metadata
    return TrackingRow(
        # A client retry reuses its eventId; otherwise the server makes a time-ordered one.
        event_id=event.event_id or new_event_id(),
        event_type=event.event_type.value,
        session_id=event.session_id,
        user_id=event.user_id,
        received_at=ctx.received_at,
        client_timestamp=timestamp,
        url=meta.url,
        referrer=meta.referrer or "",
        user_agent=meta.user_agent or "",
        device_type=(meta.device_type or "").lower(),
        properties=bytes(event.properties).decode(),
    )


def now() -> datetime:
    return datetime.now(UTC)
