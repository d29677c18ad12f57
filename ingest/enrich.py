"""Enrichment, as a named sequence of small steps.

In the request (pure, no I/O): `to_row` stamps the server facts on each event, then each of
STEPS fills what it knows. Per batch, before the insert (one Redis call): `SessionStore.enrich` in
`sessions.py` drops duplicates and attaches session data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.ids import new_event_id
from core.limits import TRUST_CLIENT_FUTURE, TRUST_CLIENT_PAST
from core.metrics import BOT_EVENTS
from ingest.geo import UNKNOWN, Place
from ingest.schema import TrackingEvent
from ingest.useragent import MAX_LENGTH, parse_agent
from tracked.row import TrackingRow


@dataclass(frozen=True, slots=True)
class Context:
    """What the request tells us about every event in it."""

    received_at: datetime
    place: Place = UNKNOWN  # GeoIP of the client address, looked up once per request
    header_user_agent: str = ""


Step = Callable[[list[TrackingRow], Context], None]


def to_row(event: TrackingEvent, ctx: Context) -> TrackingRow:
    timestamp = event.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    meta = event.metadata
    return TrackingRow(
        # A client retry reuses its eventId; otherwise the server makes a time-ordered one.
        event_id=event.event_id or new_event_id(),
        event_type=event.event_type,
        session_id=event.session_id,
        user_id=event.user_id,
        received_at=ctx.received_at,
        client_timestamp=timestamp,
        occurred_at=ctx.received_at,
        url=meta.url,
        referrer=meta.referrer or "",
        user_agent=(meta.user_agent or ctx.header_user_agent)[:MAX_LENGTH],
        device_type=_device_type(meta.device_type),
        properties=bytes(event.properties).decode(),
    )


_KNOWN_DEVICES = frozenset({"mobile", "tablet", "desktop"})


def _device_type(given: str | None) -> str:
    if not given:
        return ""
    lowered = given.lower()
    return lowered if lowered in _KNOWN_DEVICES else given


def trust_client_clock(rows: list[TrackingRow], ctx: Context) -> None:
    earliest = ctx.received_at - TRUST_CLIENT_PAST
    latest = ctx.received_at + TRUST_CLIENT_FUTURE
    for row in rows:
        ts = row.client_timestamp
        if ts is not None and earliest <= ts <= latest:
            row.occurred_at = ts


def put_geolocation(rows: list[TrackingRow], ctx: Context) -> None:
    country, region, city = ctx.place
    for row in rows:
        row.country, row.region, row.city = country, region, city


def parse_user_agent(rows: list[TrackingRow], ctx: Context) -> None:
    for row in rows:
        agent = parse_agent(row.user_agent)
        row.browser, row.browser_version = agent.browser, agent.browser_version
        row.os, row.os_version = agent.os, agent.os_version
        if not row.device_type:
            row.device_type = agent.device_type


def flag_bot(rows: list[TrackingRow], ctx: Context) -> None:
    # Bots are stored, flagged, and kept out of every report by `is_bot = 0` in the views.
    bots = 0
    for row in rows:
        row.is_bot = parse_agent(row.user_agent).is_bot
        bots += row.is_bot
    if bots:
        BOT_EVENTS.inc(bots)


STEPS: Sequence[Step] = (trust_client_clock, put_geolocation, parse_user_agent, flag_bot)


def enrich(
    events: Sequence[TrackingEvent], ctx: Context, steps: Sequence[Step] = STEPS
) -> list[TrackingRow]:
    """The rows for one request's events. Steps take the request's rows together: one call
    per step and request, not per event, which matters for arrays of 100."""
    rows = [to_row(event, ctx) for event in events]
    for step in steps:
        step(rows, ctx)
    return rows


def now() -> datetime:
    return datetime.now(UTC)
