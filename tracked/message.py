"""`lomash.analytics.event.tracked`: one message per stored tracking event, written into the
tracking log by the writer once the event is placed and published from there by the relay
(`ingest/relay.py`), the one publisher of this topic."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from core.contracts import EVENT_TRACKED, VERSION, Envelope, EventTracked
from core.metrics import EVENTS_STORED, VISIBLE_SECONDS
from tracked.row import TrackingRow

ROUTING_KEY = EVENT_TRACKED.routing_key


def _envelope(row: TrackingRow) -> Envelope[EventTracked]:
    # The tracked event's own id identifies the message: a re-send is recognisable downstream.
    return Envelope(
        event_id=row.event_id,
        event_type=EVENT_TRACKED.event_type,
        timestamp=row.received_at,
        version=VERSION,
        payload=EventTracked(
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
    )


def envelope(row: TrackingRow) -> bytes:
    return _encode(_envelope(row))


def envelope_lines(rows: list[TrackingRow]) -> bytes:
    """The rows' messages as JSON lines, encoded in one call. Each line starts with
    `{"eventId":"<the id>"`: the relay reads the message id from there."""
    return _encode_lines([_envelope(row) for row in rows])


_encoder = msgspec.json.Encoder()
_encode, _encode_lines = _encoder.encode, _encoder.encode_lines


def record_stored(rows: list[TrackingRow]) -> None:
    EVENTS_STORED.inc(len(rows))
    if rows:
        oldest = min(row.received_at for row in rows)
        VISIBLE_SECONDS.observe((datetime.now(UTC) - oldest).total_seconds())
