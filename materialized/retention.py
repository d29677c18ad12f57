"""Weekly retention cohorts (`GET /v1/analytics/stats/retention`): who came back, week by week.

A week starts on Monday at midnight in REPORT_TIMEZONE (so a week holding a clock change is
167 or 169 hours long) and is cut at the hour, as every range here is.
- `by=visit`: a visitor (userId, else sessionId; bots never count) belongs to the cohort of
  the week of their first event received in the range; `returning[k-1]` counts the cohort's
  visitors with an event in the k-th week after it. Read from `stats_visits` (sql/0021, one
  row per hour and session, kept 400 days) for the whole hours of the range and from the raw
  events for the partial hours at its ends: exact.
- `by=order`: a customer belongs to the cohort of the week of their first `order-created`
  ever (`customer_first_order`, sql/0009), when it falls in the range; `returning[k-1]`
  counts the cohort's customers who ordered again in the k-th week after it (orders in the
  range, from `analytics_events`).
Every week the range meets is a cohort, empty ones included, and `returning` holds only the
later weeks that start before the range ends (at most `weeks`): a week not yet begun is not a
week nobody came back in. The last may be partial: the range's end cuts it.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from core.clickhouse import Warehouse
from materialized.stats import whole_hours

DEFAULT_WEEKS = 8
MAX_WEEKS = 52


class CohortBy(StrEnum):
    VISIT = "visit"
    ORDER = "order"


class Cohort(msgspec.Struct):
    week: date  # the cohort's Monday in REPORT_TIMEZONE
    size: int
    returning: list[int]  # per later week, the cohort's members seen (visit) or ordering (order)


class Retention(msgspec.Struct):
    by: CohortBy
    cohorts: list[Cohort]


# (cohort Monday, weeks after it, members) rows from a per-member list of active weeks.
_COUNTS = (
    "SELECT cohort, k, count() FROM ({members}) ARRAY JOIN ks AS k"
    " WHERE k <= {{weeks:UInt32}} GROUP BY cohort, k"
)
_AFTER = "arrayFilter(k -> k > 0, arrayMap(w -> intDiv(dateDiff('day', cohort, w), 7), active))"


def _visits(zone: str, start: datetime, end: datetime, parameters: dict[str, Any]) -> str:
    whole = whole_hours(start, end)
    raw = (
        "SELECT ifNull(user_id, session_id) AS v, toDateTime(received_at) AS t FROM tracking_events"
        " WHERE NOT is_bot AND "
    )
    if whole is None:
        source = raw + (
            "received_at >= {start:DateTime64(3, 'UTC')}"
            " AND received_at < {end:DateTime64(3, 'UTC')}"
        )
    else:
        parameters["h1"], parameters["h2"] = whole
        source = (
            "SELECT visitor AS v, hour AS t FROM stats_visits"
            " WHERE hour >= {h1:DateTime('UTC')} AND hour < {h2:DateTime('UTC')}"
            f" UNION ALL {raw}("
            "(received_at >= {start:DateTime64(3, 'UTC')} AND received_at < {h1:DateTime('UTC')})"
            " OR (received_at >= {h2:DateTime('UTC')}"
            " AND received_at < {end:DateTime64(3, 'UTC')}))"
        )
    members = (
        f"SELECT cohort, arrayConcat([0], {_AFTER}) AS ks FROM ("
        "SELECT active, arrayMin(active) AS cohort FROM ("
        f"SELECT v, groupUniqArray(toMonday(t, '{zone}')) AS active FROM ({source}) GROUP BY v))"
    )
    return _COUNTS.format(members=members)


def _orders(zone: str) -> str:
    first = (
        f"SELECT customer_id AS v, toMonday(first, '{zone}') AS cohort FROM ("
        "SELECT customer_id, minMerge(first_order) AS first FROM customer_first_order"
        " GROUP BY customer_id)"
        " WHERE first >= {start:DateTime64(3, 'UTC')} AND first < {end:DateTime64(3, 'UTC')}"
    )
    # Presence per week only: a duplicate delivery of an order cannot count twice.
    ordered = (
        f"SELECT assumeNotNull(customer_id) AS v, groupUniqArray(toMonday(occurred_at, '{zone}'))"
        " AS active FROM analytics_events WHERE event_type = 'order-created'"
        " AND customer_id IS NOT NULL AND occurred_at >= {start:DateTime64(3, 'UTC')}"
        " AND occurred_at < {end:DateTime64(3, 'UTC')} GROUP BY v"
    )
    members = (
        f"SELECT cohort, arrayConcat([0], {_AFTER}) AS ks FROM ("
        f"SELECT c.cohort AS cohort, o.active AS active FROM ({first}) AS c"
        f" LEFT JOIN ({ordered}) AS o USING v)"
    )
    return _COUNTS.format(members=members)


def _monday(moment: datetime, zone: zoneinfo.ZoneInfo) -> date:
    day = moment.astimezone(zone).date()
    return day - timedelta(days=day.weekday())


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


async def cohorts(
    warehouse: Warehouse,
    zone: zoneinfo.ZoneInfo,
    by: CohortBy,
    start: datetime,
    end: datetime,
    weeks: int = DEFAULT_WEEKS,
) -> Retention:
    parameters: dict[str, Any] = {"start": start, "end": end, "weeks": weeks}
    sql = _visits(zone.key, start, end, parameters) if by is CohortBy.VISIT else _orders(zone.key)
    found = {(week, int(k)): int(n) for week, k, n in await warehouse.rows(sql, parameters)}
    listed: list[Cohort] = []
    week = _monday(start, zone)
    while _midnight(week, zone) < end:
        later = [k for k in range(1, weeks + 1) if _midnight(week + timedelta(weeks=k), zone) < end]
        listed.append(
            Cohort(week, found.get((week, 0), 0), [found.get((week, k), 0) for k in later])
        )
        week += timedelta(weeks=1)
    return Retention(by, listed)
