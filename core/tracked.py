"""`lomash.analytics.event.tracked`: one message per stored tracking event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from core.envelope import Envelope, routing_key_to_event_type
from core.metrics import EVENTS_STORED, VISIBLE_SECONDS
from core.publisher import EventPublisher, Receipt
from core.rows import TrackingRow

ROUTING_KEY = "lomash.analytics.event.tracked"
EVENT_TYPE = routing_key_to_event_type(ROUTING_KEY)


class TrackedPayload(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    event_id: uuid.UUID
    event_type: str
    session_id: uuid.UUID
    user_id: uuid.UUID | None
    url: str
    occurred_at: datetime
    received_at: datetime
    device_type: str
    country: str
    is_bot: bool
    session_seq: int
    properties: msgspec.Raw


_encoder = msgspec.json.Encoder()


def envelope(row: TrackingRow) -> bytes:
    # The tracked event's own id identifies the message: a re-send is recognisable downstream.
    return _encoder.encode(
        Envelope[TrackedPayload](
            event_id=row.event_id,
            event_type=EVENT_TYPE,
            timestamp=row.received_at,
            payload=TrackedPayload(
                event_id=row.event_id,
                event_type=row.event_type,
                session_id=row.session_id,
                user_id=row.user_id,
                url=row.url,
                occurred_at=row.occurred_at,
                received_at=row.received_at,
                device_type=row.device_type,
                country=row.country,
                is_bot=row.is_bot,
                session_seq=row.session_seq,
                properties=msgspec.Raw(row.properties.encode()),
            ),
        )
    )


def announce_stored(publisher: EventPublisher | None, rows: list[TrackingRow]) -> Receipt | None:
    """Count the rows as stored and queue their messages; the receipt settles once the broker
    has confirmed every one."""
    EVENTS_STORED.inc(len(rows))
    if rows:
        oldest = min(row.received_at for row in rows)
        VISIBLE_SECONDS.observe((datetime.now(UTC) - oldest).total_seconds())
    return publish_tracked(publisher, rows)


def publish_tracked(publisher: EventPublisher | None, rows: list[TrackingRow]) -> Receipt | None:
    if publisher is None or not rows:
        return None
    receipt = Receipt(len(rows))
    for row in rows:
        publisher.publish(ROUTING_KEY, str(row.event_id), envelope(row), receipt)
    return receipt
