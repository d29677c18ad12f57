"""Every message we publish on the platform exchange, exactly as the platform's event spec
gives it (docs/contracts.md, "Published"): the envelope `{eventId, eventType, timestamp,
version: "1.0", payload}` and one payload Struct per topic. Other services are written against
these shapes: fields may be added after the spec's, never renamed or dropped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec

from core.ids import new_event_id

P = TypeVar("P")
VERSION = "1.0"


class Envelope(msgspec.Struct, Generic[P], rename="camel", kw_only=True, gc=False):
    """The platform's envelope, ours and theirs: we publish version "1.0"; the consumer reads
    other services' (`Envelope[msgspec.Raw]`), whose version may be a number."""

    event_id: uuid.UUID
    event_type: str
    timestamp: datetime
    version: str | int  # required: a message without one is refused
    payload: P


class Topic(msgspec.Struct, frozen=True):
    routing_key: str
    event_type: str  # the envelope's eventType


EVENT_TRACKED = Topic("lomash.analytics.event.tracked", "event-tracked")
FUNNEL_COMPLETED = Topic("lomash.analytics.funnel.completed", "funnel-completed")
DASHBOARD_REFRESHED = Topic("lomash.analytics.dashboard.refreshed", "dashboard-refreshed")
REPORT_GENERATED = Topic("lomash.analytics.report.generated", "report-generated")
# Not in the spec's table: the admin alert the notification service relays, named alike.
ALERT_RAISED = Topic("lomash.analytics.alert.raised", "alert-raised")


class EventTracked(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    tracking_event_id: uuid.UUID
    event_type: str  # PAGEVIEW ...
    session_id: uuid.UUID
    user_id: uuid.UUID | None
    properties: msgspec.Raw
    # Added after the spec's fields: what enrichment knows of the event.
    url: str
    occurred_at: datetime
    received_at: datetime
    device_type: str
    country: str
    is_bot: bool
    session_seq: int


class FunnelStep(msgspec.Struct):
    step: str
    count: int


class FunnelCompleted(msgspec.Struct, rename="camel", kw_only=True):
    funnel_id: uuid.UUID  # this computation
    funnel_name: Literal["BOOKING", "CHECKOUT"]
    period_from: datetime
    period_to: datetime
    steps: list[FunnelStep]
    conversion_rate: float
    window_seconds: int  # added: windowFunnel's window


class DashboardRefreshed(msgspec.Struct, rename="camel", kw_only=True):
    snapshot_id: uuid.UUID  # the dashboard_snapshots row written
    computed_at: datetime
    # Added: which range the snapshot is of.
    label: str
    range_from: datetime = msgspec.field(name="from")
    range_to: datetime = msgspec.field(name="to")


class ReportGenerated(msgspec.Struct, rename="camel", kw_only=True):
    export_id: uuid.UUID
    report_type: str
    format: str
    download_url: str
    expires_at: datetime
    requested_by: uuid.UUID  # the token's `sub`: the admin's user id
    rows: int  # added


class AlertRaised(msgspec.Struct, rename="camel", kw_only=True):
    alert_type: str
    status: Literal["RAISED", "RESOLVED"]
    severity: str
    audience: str
    message: str
    snapshot_age_minutes: int | None


_encoder = msgspec.json.Encoder()


def encode(
    topic: Topic,
    payload: Any,
    *,
    event_id: uuid.UUID | None = None,
    timestamp: datetime | None = None,
) -> tuple[str, bytes]:
    """The message id (the envelope's eventId, also the AMQP message_id) and the body."""
    event_id = event_id or new_event_id()
    body = _encoder.encode(
        Envelope(
            event_id=event_id,
            event_type=topic.event_type,
            timestamp=timestamp or datetime.now(UTC),
            version=VERSION,
            payload=payload,
        )
    )
    return str(event_id), body
