"""Journeys (`GET /v1/analytics/stats/journeys`): the pages sessions go through after an entry
page, or before a goal, most common first.

A session (bots excluded) is one that started in the range, as the stats count them, with its
pageviews in time order (ties by event id) and repeats in a row collapsed (`/a /b /b /a` is
`/a /b /a`: a reload is not a step). Events are read up to a day past the range's end
(SESSION_SPAN), which is how long a session's events are taken to keep coming.
- `entry=PATH`: sessions whose entry page (the path of their first event, the `entry_page`
  dimension) is PATH; the journey is the next `steps` pages after it (the entry's own first
  pageviews left out). A session that views nothing after its entry has no journey.
- `goal=EVENT_TYPE`: sessions with an event of that type; the journey is the last `steps`
  pages viewed up to the session's first such event (a pageview at the same instant counts).
  A session with no pageview before its goal has no journey.
A shorter session gives a shorter journey. `visitors` counts distinct visitors per journey: a
session's visitor is the userId of its first event read that carries one, else its sessionId.
Read from the raw events (kept RAW_RETENTION_DAYS): only they keep each event's order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from core.clickhouse import Warehouse

MAX_STEPS = 5
DEFAULT_STEPS = 3
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_PATH_CHARS = 512
SESSION_SPAN = timedelta(days=1)


class Journey(msgspec.Struct):
    pages: list[str]
    visitors: int


class Journeys(msgspec.Struct):
    paths: list[Journey]  # most visitors first, then by pages


_STARTED = (
    " AND ifNull(session_started_at, received_at) >= {start:DateTime64(3, 'UTC')}"
    " AND ifNull(session_started_at, received_at) < {end:DateTime64(3, 'UTC')}"
)
_READ = (
    " AND NOT is_bot AND received_at >= {start:DateTime64(3, 'UTC')}"
    " AND received_at < {until:DateTime64(3, 'UTC')}" + _STARTED
)


def _sessions(where: str, goal: bool) -> str:
    """Per session: its visitor, its pageviews' paths in time order (ties by event id, as a
    number: the order of its text) and, with `goal`, the time of its first goal event."""
    goal_at = ", minIf(ts, event_type = {goal:String}) AS goal_at" if goal else ", 0 AS goal_at"
    having = " HAVING countIf(event_type = {goal:String}) > 0" if goal else ""
    return (
        "SELECT ifNull(argMinIf(user_id, (ts, id), isNotNull(user_id)), session_id) AS visitor,"
        # Sorted as whole tuples: (time, id) is unique, so the path never decides.
        " arraySort(groupArrayIf((ts, id, path), event_type = 'PAGEVIEW'))"
        f" AS pageviews{goal_at} FROM (SELECT session_id, user_id, path, event_type,"
        " toUnixTimestamp64Milli(occurred_at) AS ts, toUInt128(event_id) AS id,"
        " ifNull(session_started_at, received_at) AS started"
        f" FROM tracking_events WHERE {where}{_READ})"
        f" GROUP BY session_id, started{having}"
    )


_COLLAPSED = "arrayFilter((p, i) -> i = 1 OR p != seen[i - 1], seen, arrayEnumerate(seen))"
# The sessions with a goal event, found first from the goal's rows alone: only their pageviews
# are then grouped.
_REACHING = (
    "session_id IN (SELECT session_id FROM tracking_events WHERE event_type = {goal:String}"
    f"{_READ})"
)


def _entry_sql() -> str:
    sessions = _sessions("event_type = 'PAGEVIEW' AND path(landing_page) = {entry:String}", False)
    return (
        "SELECT visitor, arraySlice(if(collapsed[1] = {entry:String}, arrayPopFront(collapsed),"
        " collapsed), 1, {steps:UInt8}) AS pages FROM ("
        f"SELECT visitor, arrayMap(e -> e.3, pageviews) AS seen, {_COLLAPSED} AS collapsed"
        f" FROM ({sessions}))"
    )


def _goal_sql() -> str:
    sessions = _sessions(f"event_type IN ('PAGEVIEW', {{goal:String}}) AND {_REACHING}", True)
    return (
        "SELECT visitor, arraySlice(collapsed, -{steps:UInt8}) AS pages FROM ("
        "SELECT visitor, arrayMap(e -> e.3, arrayFilter(e -> e.1 <= goal_at, pageviews)) AS seen,"
        f" {_COLLAPSED} AS collapsed FROM ({sessions}))"
    )


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
        "until": end + SESSION_SPAN,
        "steps": steps,
        "limit": limit,
        "entry": entry or "",
        "goal": goal or "",
    }
    per_session = _entry_sql() if entry is not None else _goal_sql()
    rows = await warehouse.rows(
        f"SELECT pages, uniqExact(visitor) AS visitors FROM ({per_session})"
        " WHERE notEmpty(pages) GROUP BY pages ORDER BY visitors DESC, pages"
        " LIMIT {limit:UInt32}",
        parameters,
    )
    return Journeys([Journey([str(p) for p in pages], int(n)) for pages, n in rows])
