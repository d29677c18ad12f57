"""Journeys (`GET /v1/analytics/stats/journeys`): the pages sessions go through after an entry
page, or before a goal, most common first.

The sessions are those that started in the range, as the stats count them, each as
materialized/session_journeys.py takes it: its visitor, its entry page and its pages in time
order with repeats in a row collapsed.
- `entry=PATH`: sessions whose entry page is PATH; the journey is the next `steps` pages after
  it (the entry's own first pageviews left out). A session that views nothing after its entry
  has no journey.
- `goal=EVENT_TYPE`: sessions with an event of that type; the journey is the last `steps`
  pages viewed up to the session's first such event (a pageview at the same instant counts).
  A session with no pageview before its goal has no journey.
A shorter session gives a shorter journey; `visitors` counts distinct visitors per journey.
The sealed hours of the range (materialized/session_hours.py) are read from their rows per
session (`stats_session_journeys`), the others (the hours the range cuts, the recent ones and
those touched since their seal) from the raw events, computed the same way; both exist only
for the raw days (RAW_RETENTION_DAYS): only they keep each event's order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from core.clickhouse import Warehouse
from materialized import session_hours
from materialized.session_journeys import COLUMNS, RECEIVED_EARLY, SESSION_SPAN, per_session
from materialized.stats import whole_hours

MAX_STEPS = 5
DEFAULT_STEPS = 3
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_PATH_CHARS = 512
HOUR = timedelta(hours=1)


class Journey(msgspec.Struct):
    pages: list[str]
    visitors: int


class Journeys(msgspec.Struct):
    paths: list[Journey]  # most visitors first, then by pages


_SEALED_ROWS = (
    f"SELECT {', '.join(COLUMNS)} FROM stats_session_journeys"
    " WHERE start_hour IN {sealed:Array(DateTime('UTC'))}"
    " AND (start_hour, sealed_at) IN (SELECT start_hour, max(sealed_at)"
    " FROM stats_session_hours WHERE start_hour IN {sealed:Array(DateTime('UTC'))}"
    " GROUP BY start_hour)"
)
_STARTED = (
    "started >= {start:DateTime64(3, 'UTC')} AND started < {end:DateTime64(3, 'UTC')}"
    " AND toStartOfHour(started) IN {rest:Array(DateTime('UTC'))}"
)
# What a journey is, over either kind of per-session row.
_AFTER_ENTRY = (
    "SELECT visitor, arraySlice(if(pages[1] = {entry:String}, arrayPopFront(pages), pages),"
    " 1, {steps:UInt8}) AS journey FROM ({rows}) WHERE entry = {entry:String}"
)
_BEFORE_GOAL = (
    "SELECT visitor, arraySlice(arrayFilter((p, t) -> t <= type_at[indexOf(types, {goal:String})],"
    " pages, page_at), -{steps:UInt8}) AS journey FROM ({rows}) WHERE has(types, {goal:String})"
)


def _windows(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Where the events of sessions started in `hours` (sorted) can have been received, as
    few [from, to) spans as cover them: one per run of hours whose spans meet."""
    windows: list[tuple[datetime, datetime]] = []
    for hour in hours:
        first, last = hour - RECEIVED_EARLY, hour + HOUR + SESSION_SPAN
        if windows and first <= windows[-1][1]:
            windows[-1] = (windows[-1][0], last)
        else:
            windows.append((first, last))
    return windows


def _raw_rows(rest: list[datetime], parameters: dict[str, Any], entry: bool) -> str:
    """Per-session rows from the raw events for the sessions that started in the range in the
    `rest` hours: read only where their events can be, and first narrowed to the sessions with
    an event of the goal, or one landed on the entry page (the rows say which for sure)."""
    received = []
    for n, (first, last) in enumerate(_windows(rest)):
        parameters[f"from{n}"], parameters[f"to{n}"] = first, last
        received.append(
            f"(received_at >= {{from{n}:DateTime64(3, 'UTC')}}"
            f" AND received_at < {{to{n}:DateTime64(3, 'UTC')}})"
        )
    bounds = f"({' OR '.join(received)})"
    narrow = "path(landing_page) = {entry:String}" if entry else "event_type = {goal:String}"
    sessions = (
        f"session_id IN (SELECT session_id FROM tracking_events WHERE {narrow} AND NOT is_bot"
        f" AND {bounds})"
    )
    return per_session(f"{bounds} AND {_STARTED} AND {sessions}")


async def journeys(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    *,
    entry: str | None = None,
    goal: str | None = None,
    steps: int = DEFAULT_STEPS,
    limit: int = DEFAULT_LIMIT,
) -> Journeys:
    """Journeys after `entry` or before `goal` (exactly one of them)."""
    if (entry is None) == (goal is None):
        raise ValueError("journeys need an entry page or a goal, not both")
    parameters: dict[str, Any] = {
        "start": start,
        "end": end,
        "steps": steps,
        "limit": limit,
        "entry": entry or "",
        "goal": goal or "",
    }
    whole = whole_hours(start, end)
    sealed = (
        await session_hours.sealed(warehouse, *whole, session_hours.Rows.JOURNEYS)
        if whole is not None
        else []
    )
    hour, kept = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0), set(sealed)
    rest: list[datetime] = []
    while hour < end:
        if hour not in kept:
            rest.append(hour)
        hour += HOUR
    parameters["sealed"], parameters["rest"] = sealed, rest
    parts: list[str] = []
    if sealed:
        parts.append(_SEALED_ROWS)
    if rest:
        parts.append(_raw_rows(rest, parameters, entry is not None))
    if not parts:
        return Journeys([])
    journey = _AFTER_ENTRY if entry is not None else _BEFORE_GOAL
    per_session_journeys = " UNION ALL ".join(journey.replace("{rows}", part) for part in parts)
    rows = await warehouse.rows(
        f"SELECT journey, uniqExact(visitor) AS visitors FROM ({per_session_journeys})"
        " WHERE notEmpty(journey) GROUP BY journey ORDER BY visitors DESC, journey"
        " LIMIT {limit:UInt32}",
        parameters,
    )
    return Journeys([Journey([str(p) for p in pages], int(n)) for pages, n in rows])
