"""Sealed session hours: the overview's sessions, bounces and visit duration for the whole
hours of a long range from one row per hour (`stats_session_hours`, sql/0028) instead of a row
per session (`stats_sessions`), which grows with the traffic.

A session's row changes for as long as its events arrive, so an hour is summed only when it
is old enough (SEAL_AFTER) and summed again whenever rows reach its sessions later: every
insert into `tracking_events` stamps the start hours it touched with the server's clock
(`stats_session_touches`), and a seal counts only while it is newer than the hour's last touch
by IN_FLIGHT (an insert's rows become visible a moment after its stamp). A touched hour is read
from `stats_sessions` until the next seal (`seal_session_hours`, every ten minutes), so an
answer never waits for the job and never counts a session twice or misses one. An erasure
touches the hours of the sessions it removes (materialized/erasure.py).

The same seal sums each hour's sessions per value of every dimension (`stats_session_values`:
a session under each value one of its events has, once) and per audience
(`stats_session_audience`: country, device, browser and OS together, for the sessions whose
events all share one; the rest are counted as `unplaced`), so that filtered overviews merge
rows per hour too (materialized/stats.py says which filter reads which), and keeps a row per
session of what a journey needs (`stats_session_journeys`, materialized/session_journeys.py),
so that a month's journeys read those instead of grouping the month's raw events by session.
Once an hour's row is in, the seal deletes the rows of its earlier seals.

Sessions and bounces stay exact (sums). Durations are kept as histograms of their bfloat16
(8 significant bits, as quantileBFloat16 cuts them), which merge by adding: thousands of
quantile states (a month of an hour's audiences) cost several times more to merge. The
median is read off the summed histogram as the exact one is taken (the two middle durations'
mean when their number is even), each duration cut: at most 0.8% below the exact median,
never above (`visitDurationExact: false` says so).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from core.clickhouse import Warehouse
from core.limits import RAW_RETENTION_DAYS
from materialized import session_journeys
from materialized.dimensions import DIMENSIONS, VISIT_DIMENSIONS

SEAL_AFTER = timedelta(hours=2)
IN_FLIGHT_SECONDS = 60
MAX_HOURS_PER_SEAL = 24 * 31  # a month a run at most
SEAL_CHUNK_HOURS = 24  # summed per query: a day's sessions in one join at most
SEAL_RUN_SECONDS = 120.0  # no chunk begun past this, well inside the job's timeout

_TOUCHED = (
    "SELECT start_hour, max(touched_at) AS touched FROM stats_session_touches"
    " WHERE start_hour >= {first:DateTime('UTC')} AND start_hour < {last:DateTime('UTC')}"
    " GROUP BY start_hour"
)
_SEALED = (
    "SELECT start_hour, max(sealed_at) AS sealed, argMax(unplaced, sealed_at) AS unplaced,"
    " argMax(journeys, sealed_at) AS journeys FROM stats_session_hours"
    " WHERE start_hour >= {first:DateTime('UTC')} AND start_hour < {last:DateTime('UTC')}"
    " GROUP BY start_hour"
)
# Over a stats_sessions row, here and in stats.py.
BOUNCE = "pageviews = 1 AND events = 1"
DURATION_MS = "toUInt64(toUnixTimestamp64Milli(last_at) - toUnixTimestamp64Milli(first_at))"
# The duration's bfloat16 (the top 16 bits of its float32), and a histogram of them (sql/0029).
DURATION_BUCKET = f"toUInt16(bitShiftRight(reinterpretAsUInt32(toFloat32({DURATION_MS})), 16))"
DURATION_HISTOGRAM = f"sumMap(map({DURATION_BUCKET}, toUInt64(1)))"

# The audience a filter on country, device, browser or os reads (sql/0029), as stats_visits
# names them; the API's names in stats.py.
AUDIENCE = ("country", "device_type", "browser", "os")
_HOURS = "{hours:Array(DateTime('UTC'))}"
# The rollup rows of the sealed hours' sessions: from their first hour to the last any row
# reached them (`last`: the chunk's latest touch, past which no row of theirs was stored).
_SESSION_ROWS = (
    f"hour >= {{first:DateTime('UTC')}} AND hour <= {{last:DateTime('UTC')}}"
    f" AND toStartOfHour(started) IN {_HOURS}"
)
_SESSIONS = f"(SELECT * FROM stats_sessions FINAL WHERE start_hour IN {_HOURS}) AS s"
# Each sealed session's audiences: the distinct ones its events came with. A session is its
# id and start hour, as in stats_sessions (an event stored without session data starts its own).
_AUDIENCES = (
    "SELECT session_id, toStartOfHour(started) AS start_hour,"
    f" groupUniqArray(({', '.join(AUDIENCE)})) AS audiences FROM stats_visits"
    f" WHERE {_SESSION_ROWS} GROUP BY session_id, start_hour"
)
# Sessions that came with one audience, summed per hour and audience. Written, as the values
# are, before the hour's row, which counts the sessions left out (`unplaced`): a seal whose
# last insert fails is never read.
_SEAL_AUDIENCE = (
    f"INSERT INTO stats_session_audience (start_hour, sealed_at, {', '.join(AUDIENCE)},"
    " sessions, bounces, histogram)"
    " SELECT start_hour, {sealed_at:DateTime64(3, 'UTC')},"
    f" {', '.join(f'audience.{n + 1}' for n in range(len(AUDIENCE)))},"
    " count(), countIf(bounce), sumMap(map(duration, toUInt64(1))) FROM ("
    f" SELECT s.start_hour AS start_hour, ({BOUNCE}) AS bounce, {DURATION_BUCKET} AS duration,"
    f" a.audiences[1] AS audience FROM {_SESSIONS}"
    f" INNER JOIN ({_AUDIENCES}) AS a USING (start_hour, session_id)"
    " WHERE length(a.audiences) = 1)"
    " GROUP BY start_hour, audience"
)


def _pairs(table: str, dimensions: list[str]) -> str:
    """(session_id, start_hour, pair) rows of `table` for the sealed hours' sessions: each
    row's value of every one of `dimensions`."""
    values = ", ".join(f"('{name}', toString({DIMENSIONS[name]}))" for name in dimensions)
    return (
        "SELECT session_id, toStartOfHour(started) AS start_hour,"
        f" arrayJoin([{values}]) AS pair FROM {table} WHERE {_SESSION_ROWS}"
    )


# Each sealed session's distinct (dimension, value) pairs over all its events: the session's
# own from stats_visits, the page and event type from stats_pages (four times its rows).
_VALUES = (
    "SELECT session_id, start_hour, groupUniqArray(pair) AS pairs FROM ("
    f"{_pairs('stats_visits', sorted(VISIT_DIMENSIONS))} UNION ALL"
    f" {_pairs('stats_pages', sorted(set(DIMENSIONS) - VISIT_DIMENSIONS))})"
    " GROUP BY session_id, start_hour"
)
_SEAL_VALUES = (
    "INSERT INTO stats_session_values (start_hour, sealed_at, dimension, value, sessions,"
    " bounces, histogram)"
    " SELECT start_hour, {sealed_at:DateTime64(3, 'UTC')}, pair.1, pair.2,"
    " count(), countIf(bounce), sumMap(map(duration, toUInt64(1))) FROM ("
    f" SELECT s.start_hour AS start_hour, ({BOUNCE}) AS bounce, {DURATION_BUCKET} AS duration,"
    f" v.pairs AS pairs FROM {_SESSIONS}"
    f" INNER JOIN ({_VALUES}) AS v USING (start_hour, session_id)) ARRAY JOIN pairs AS pair"
    " GROUP BY start_hour, pair"
)
_SEAL = (
    "INSERT INTO stats_session_hours"
    " (start_hour, sealed_at, sessions, bounces, histogram, unplaced, journeys)"
    " SELECT h.start_hour, {sealed_at:DateTime64(3, 'UTC')}, a.sessions, a.bounces, a.histogram,"
    " a.sessions - p.placed, j.journeys"
    f" FROM (SELECT arrayJoin({_HOURS}) AS start_hour) AS h"
    " LEFT JOIN (SELECT start_hour, count() AS sessions,"
    f" countIf({BOUNCE}) AS bounces, {DURATION_HISTOGRAM} AS histogram"
    f" FROM stats_sessions FINAL WHERE start_hour IN {_HOURS}"
    " GROUP BY start_hour) AS a USING start_hour"
    " LEFT JOIN (SELECT start_hour, sum(sessions) AS placed FROM stats_session_audience"
    f" WHERE start_hour IN {_HOURS}"
    " AND sealed_at = {sealed_at:DateTime64(3, 'UTC')} GROUP BY start_hour) AS p USING start_hour"
    " LEFT JOIN (SELECT start_hour, count() AS journeys FROM stats_session_journeys"
    f" WHERE start_hour IN {_HOURS}"
    " AND sealed_at = {sealed_at:DateTime64(3, 'UTC')} GROUP BY start_hour) AS j USING start_hour"
)
# Once the hour's row is in: the rows of its earlier seals, which no read counts any more
# (a value or audience the hour no longer has would otherwise stay for good).
SEALED_PER_HOUR = ("stats_session_values", "stats_session_audience", "stats_session_journeys")
_SUPERSEDED = f"start_hour IN {_HOURS} AND sealed_at < {{sealed_at:DateTime64(3, 'UTC')}}"


class Rows(StrEnum):
    """What a question reads of the sealed hours."""

    ANY = "any"  # any valid seal
    VALUES = "values"  # hours sealed with histograms and values (since sql/0029)
    AUDIENCE = "audience"  # those whose every session is in the audience rows too
    JOURNEYS = "journeys"  # hours sealed with their sessions' journeys (since sql/0033)


async def sealed(
    warehouse: Warehouse, first: datetime, last: datetime, rows: Rows = Rows.ANY
) -> list[datetime]:
    """The hours in [first, last) whose latest seal still counts and holds `rows`."""
    holds = {
        Rows.ANY: "",
        Rows.VALUES: " AND s.unplaced >= 0",
        Rows.AUDIENCE: " AND s.unplaced = 0",
        Rows.JOURNEYS: " AND s.journeys >= 0",
    }
    found = await warehouse.rows(
        f"SELECT s.start_hour FROM ({_SEALED}) AS s LEFT JOIN ({_TOUCHED}) AS t USING start_hour"
        f" WHERE t.touched < s.sealed - toIntervalSecond({IN_FLIGHT_SECONDS}){holds[rows]}"
        " ORDER BY s.start_hour",
        {"first": first, "last": last},
    )
    return [_utc(row[0]) for row in found]


def histogram_median(histogram: Mapping[int, int]) -> float:
    """The median duration (ms) of a DURATION_HISTOGRAM, as cut: the mean of the two middle
    durations when their number is even, as quantileExactInclusive interpolates; NaN when
    empty."""
    count = sum(histogram.values())
    low, high = (count - 1) // 2, count // 2
    seen, lower = 0, math.nan
    for bucket in sorted(histogram):
        before, seen = seen, seen + histogram[bucket]
        value = float(struct.unpack("<f", struct.pack("<I", bucket << 16))[0])
        if before <= low < seen:
            lower = value
        if seen > high:
            return (lower + value) / 2
    return math.nan


def _utc(hour: datetime) -> datetime:
    return hour.replace(tzinfo=UTC) if hour.tzinfo is None else hour.astimezone(UTC)


async def seal(warehouse: Warehouse) -> int:
    """Sum the hours that are old enough and were touched since their seal (or never sealed),
    oldest first, then those sealed before sql/0029 (or, in the raw days, before sql/0033), up
    to MAX_HOURS_PER_SEAL, a day of hours at a time for SEAL_RUN_SECONDS at most; the number
    sealed. A seal stamped before it reads is only ever too old: a touch in between makes the
    next run seal the hour again."""
    now = await warehouse.scalar("SELECT now64(3, 'UTC')")  # the clock touches are stamped by
    horizon = now.replace(minute=0, second=0, microsecond=0) - SEAL_AFTER
    # Hours whose sessions were stored before this table existed have no touch: never sealed,
    # they are sealed as if touched at the epoch.
    untouched = (
        "SELECT DISTINCT start_hour, toDateTime64(0, 3, 'UTC') AS touched FROM stats_sessions"
        " WHERE start_hour < {last:DateTime('UTC')}"
    )
    stale = f"t.touched >= s.sealed - toIntervalSecond({IN_FLIGHT_SECONDS})"
    hours = await warehouse.rows(
        "SELECT t.start_hour, t.touched FROM (SELECT start_hour, max(touched) AS touched"
        f" FROM ({_TOUCHED} UNION ALL {untouched}) GROUP BY start_hour) AS t"
        f" LEFT JOIN ({_SEALED}) AS s USING start_hour"
        # Hours sealed before sql/0033 gain journeys only where raw events are kept: older
        # ones are left as they are (read raw, where nothing is left to read).
        f" WHERE {stale} OR s.unplaced < 0"
        " OR (s.journeys < 0 AND t.start_hour >= {raw_from:DateTime('UTC')})"
        f" ORDER BY NOT ({stale}), t.start_hour LIMIT {{limit:UInt32}}",
        {
            "first": datetime(1970, 1, 1),
            "last": horizon,
            "limit": MAX_HOURS_PER_SEAL,
            "raw_from": horizon - timedelta(days=RAW_RETENTION_DAYS + 1),
        },
    )
    began, done = time.monotonic(), 0
    for chunk in _days(sorted((_utc(hour), _utc(touched)) for hour, touched in hours)):
        if done and time.monotonic() - began > SEAL_RUN_SECONDS:
            break
        first = chunk[0][0]
        # No row reached these sessions after their latest touch (an hour since the start of
        # it, for clocks apart); hours stored before touches existed bound nothing.
        touched = max(touched for _, touched in chunk)
        bound = touched if touched.year > 1970 else _utc(now)
        parameters = {
            "hours": [hour for hour, _ in chunk],
            "first": first,
            "last": bound.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
            "sealed_at": now,
        }
        await warehouse.command(_SEAL_AUDIENCE, parameters)
        await warehouse.command(_SEAL_VALUES, parameters)
        await warehouse.command(session_journeys.SEAL, parameters)
        await warehouse.command(_SEAL, parameters)
        for table in SEALED_PER_HOUR:
            # A DELETE costs a mutation even when nothing matches, as on an hour's first seal.
            if await warehouse.rows(
                f"SELECT 1 FROM {table} WHERE {_SUPERSEDED} LIMIT 1", parameters
            ):
                await warehouse.delete_where(table, _SUPERSEDED, parameters)
        done += len(chunk)
    return done


def _days(hours: list[tuple[datetime, datetime]]) -> list[list[tuple[datetime, datetime]]]:
    """`hours` (sorted) cut into runs within SEAL_CHUNK_HOURS of their first."""
    chunks: list[list[tuple[datetime, datetime]]] = []
    for hour in hours:
        if chunks and hour[0] - chunks[-1][0][0] < timedelta(hours=SEAL_CHUNK_HOURS):
            chunks[-1].append(hour)
        else:
            chunks.append([hour])
    return chunks
