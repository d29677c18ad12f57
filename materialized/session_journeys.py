"""What a journey needs of each session, computed from the raw events one way for both the
seal that keeps it (`stats_session_journeys`, sql/0033) and the journeys read of the hours no
seal covers (materialized/journeys.py), so the two can never disagree.

A session is its id and start (`session_started_at`, else the event's own receipt, as the
stats key it), bots left out, with the events received from RECEIVED_EARLY before its start to
SESSION_SPAN after it (how long a session's events are taken to keep coming). Per session:
- `visitor`: the userId of its first event (in time order, ties by event id) that has one,
  else its sessionId;
- `entry`: the path of the landing page stored on its first event (the `entry_page`);
- `pages`: its pageviews' paths in time order with repeats in a row collapsed (`/a /b /b /a`
  is `/a /b /a`: a reload is not a step), and `page_at` the time (ms) of each run's first;
- `types`, `type_at`: each event type it had and the time (ms) of its first such event.
"""

from __future__ import annotations

from datetime import timedelta

SESSION_SPAN = timedelta(days=1)
# A session's start is the receipt of the first event its first batch held; an event another
# process received a moment earlier may be enriched after it, received before its start.
RECEIVED_EARLY = timedelta(hours=1)
COLUMNS = ("session_id", "started", "visitor", "entry", "pages", "page_at", "types", "type_at")

_STARTED = "ifNull(session_started_at, received_at)"
_SPAN = f"toIntervalSecond({int(SESSION_SPAN.total_seconds())})"
_EARLY = f"toIntervalSecond({int(RECEIVED_EARLY.total_seconds())})"


def per_session(where: str) -> str:
    """A subquery of COLUMNS, a row per session, over the raw events matching `where` (an
    expression that may name `started`, the session's start)."""
    return (
        "SELECT session_id, started,"
        " ifNull(argMinIf(user_id, (ts, id), isNotNull(user_id)), session_id) AS visitor,"
        " argMin(landing, (ts, id)) AS entry,"
        # Sorted as whole tuples: (time, id) is unique, so the path never decides.
        " arraySort(groupArrayIf((ts, id, path), event_type = 'PAGEVIEW')) AS viewed,"
        " arrayFilter(i -> i = 1 OR viewed[i].3 != viewed[i - 1].3, arrayEnumerate(viewed))"
        " AS runs, arrayMap(i -> viewed[i].3, runs) AS pages,"
        " arrayMap(i -> viewed[i].1, runs) AS page_at,"
        " minMap([toString(event_type)], [ts]) AS firsts, firsts.1 AS types, firsts.2 AS type_at"
        " FROM (SELECT session_id, user_id, path, event_type, path(landing_page) AS landing,"
        " toUnixTimestamp64Milli(occurred_at) AS ts, toUInt128(event_id) AS id,"
        f" {_STARTED} AS started FROM tracking_events WHERE NOT is_bot AND ({where})"
        f" AND received_at >= started - {_EARLY} AND received_at < started + {_SPAN})"
        " GROUP BY session_id, started"
    )


# The seal's rows for its hours' sessions (materialized/session_hours.py): their events were
# all received from RECEIVED_EARLY before the chunk's first hour, before the end of its latest
# touch's (`last`) and within the span of its last hour.
SEAL = (
    f"INSERT INTO stats_session_journeys (start_hour, sealed_at, {', '.join(COLUMNS)})"
    " SELECT toStartOfHour(started), {sealed_at:DateTime64(3, 'UTC')},"
    f" {', '.join(COLUMNS)} FROM ("
    + per_session(
        f"received_at >= {{first:DateTime('UTC')}} - {_EARLY}"
        " AND received_at < least({last:DateTime('UTC')} + toIntervalHour(1),"
        f" arrayMax({{hours:Array(DateTime('UTC'))}}) + toIntervalHour(1) + {_SPAN})"
        " AND toStartOfHour(started) IN {hours:Array(DateTime('UTC'))}"
    )
    + ")"
)
