"""`lomash.analytics.event.tracked`: one message per stored tracking event."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from core.contracts import EVENT_TRACKED, EventTracked, encode
from core.metrics import EVENTS_STORED, VISIBLE_SECONDS
from core.publisher import EventPublisher, Receipt
from core.rows import TrackingRow

ROUTING_KEY = EVENT_TRACKED.routing_key


def envelope(row: TrackingRow) -> bytes:
    # The tracked event's own id identifies the message: a re-send is recognisable downstream.
    _, body = encode(
        EVENT_TRACKED,
        EventTracked(
            tracking_event_id=row.event_id,
            event_type=row.event_type,
            session_id=row.session_id,
            user_id=row.user_id,
            properties=msgspec.Raw(row.properties.encode()),
            url=row.url,
            occurred_at=row.occurred_at,
            received_at=row.received_at,
            device_type=row.device_type,
            country=row.country,
            is_bot=row.is_bot,
            session_seq=row.session_seq,
        ),
        event_id=row.event_id,
        timestamp=row.received_at,
    )
    return body


def record_stored(rows: list[TrackingRow]) -> None:
    EVENTS_STORED.inc(len(rows))
    if rows:
        oldest = min(row.received_at for row in rows)
        VISIBLE_SECONDS.observe((datetime.now(UTC) - oldest).total_seconds())


def announce_stored(publisher: EventPublisher | None, rows: list[TrackingRow]) -> Receipt | None:
    """Count the rows as stored and queue their messages on an in-process publisher (the retry
    job's way, and ingest's without a spool); the receipt settles once the broker has
    confirmed every one."""
    record_stored(rows)
    return publish_tracked(publisher, rows)


def publish_tracked(publisher: EventPublisher | None, rows: list[TrackingRow]) -> Receipt | None:
    if publisher is None or not rows:
        return None
    receipt = Receipt(len(rows))
    for row in rows:
        publisher.publish(ROUTING_KEY, str(row.event_id), envelope(row), receipt)
    return receipt
