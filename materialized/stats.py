r"""Web analytics over the browser events: overview, breakdowns, time series, realtime.

Definitions (docs/stats.md): a visitor is the userId when known, else
the sessionId; bots never count; duplicate beacons were dropped at ingest. Visitors and
pageviews count the events received in the range. Sessions count those that *started* in the
range (at `session_started_at`, the beacon path's first sight of them), each with all its events:
a bounce is a session of one PAGEVIEW and nothing else, and the visit duration is the median
over sessions of last event - first event (client clocks where believable). A session's entry
page, referrer and UTM tags are those of its first event, stored on every event by the beacon path.

Where the numbers come from:
- pageviews, sessions and bounce rate are exact, always (sums in the hourly rollups;
  `stats_sessions`, one row per session, or for the sealed hours of a range past
  EXACT_VISITORS_MAX_EVENTS their sums, materialized/session_hours.py); the visit duration
  too, but for those sealed hours: at most 0.8% low (`visitDurationExact`);
- visitors are exact (`uniqExact` of ids) when the range holds at most
  EXACT_VISITORS_MAX_EVENTS events or under several filters not all on the audience (country,
  device, browser, os); filtered answers read `stats_visits` (session-level filter and
  dimension) or `stats_pages` (any other) for the whole hours of the range and raw events for
  the partial hours at its ends, both grouped by every filterable column, so a row matches a
  filter exactly when its events do. Past that many events, unfiltered overviews and
  breakdowns and overviews under one filter merge `uniqCombined64(12)` sketches from
  `stats_daily` (whole UTC days), `stats_hourly` (the other whole hours) and the raw events of
  the partial hours, and overviews under several audience filters those of
  `stats_audience_hourly` (per hour and audience) and the partial hours; a sketch's standard
  error is about 1.6% (`visitorsExact` says which).
A filter is `dimension:value` pairs joined by `;` (in a value `\;`, `\:` and `\\` stand for
`;`, `:` and `\`); an event matches when every pair does, and a session counts when one of its
events matches. `prop:KEY` is a dimension too (`prop:filter:oak`, the key escaped alike): a
question that names one reads raw events only, exactly (materialized/properties.py says why).
"""

from __future__ import annotations

import asyncio
import math
import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from core.clickhouse import Warehouse
from materialized import properties, session_hours
from materialized.dimensions import DIMENSIONS, VISIT_DIMENSIONS
from materialized.properties import DimensionError

# What sealed audience rows (sql/0029) can filter a long range's sessions on.
AUDIENCE_DIMENSIONS = frozenset(d for d in DIMENSIONS if DIMENSIONS[d] in session_hours.AUDIENCE)
EXACT_VISITORS_MAX_EVENTS = 1_000_000
MAX_FILTERS = len(DIMENSIONS)
MAX_FILTER_VALUE_CHARS = 512
MAX_BREAKDOWN_LIMIT = 1000
MAX_HOURLY_POINTS = 24 * 31
REALTIME_MINUTES = 30
REALTIME_VISITOR_MINUTES = 5

VISITOR = "ifNull(user_id, session_id)"
SKETCH = "uniqCombined64Merge(12)(visitors)"


class Interval(StrEnum):
    HOUR = "hour"
    DAY = "day"


class FilterError(ValueError):
    """A `filter` that cannot be read; the message says which part."""


_ESCAPED = re.compile(r"\\([\\;:])")


def _pairs(raw: str) -> list[str]:
    r"""`raw` cut at every `;` that is not escaped (`\;`); escapes are kept for `_unescape`."""
    parts, start, at = [], 0, 0
    while at < len(raw):
        if raw[at] == "\\" and raw[at + 1 : at + 2] in ("\\", ";", ":"):
            at += 2
            continue
        if raw[at] == ";":
            parts.append(raw[start:at])
            start = at + 1
        at += 1
    parts.append(raw[start:])
    return parts


def _unescape(value: str) -> str:
    return _ESCAPED.sub(r"\1", value)


def escape_filter_value(value: str) -> str:
    r"""A value as it goes into a filter: `\`, `;` and `:` escaped with a backslash."""
    return re.sub(r"([\\;:])", r"\\\1", value)


def _unescaped_colon(raw: str) -> int:
    """Where the first `:` that is not escaped is in `raw`, or -1."""
    at = 0
    while at < len(raw):
        if raw[at] == "\\" and raw[at + 1 : at + 2] in ("\\", ";", ":"):
            at += 2
            continue
        if raw[at] == ":":
            return at
        at += 1
    return -1


def check_dimension(dimension: str) -> str:
    """`dimension` when it can be asked: one of DIMENSIONS or `prop:KEY`."""
    if dimension in DIMENSIONS:
        return dimension
    try:
        if properties.key_of(dimension) is not None:
            return dimension
    except DimensionError as error:
        raise FilterError(str(error)) from None
    raise FilterError(f"unknown dimension {dimension!r}; one of {' '.join(DIMENSIONS)} or prop:KEY")


def parse_filter(raw: str | None) -> dict[str, str]:
    r"""`country:GB;device:mobile` -> {"country": "GB", "device": "mobile"}. In a value, `\;`
    is a `;`, `\:` a `:` and `\\` a `\` (any other backslash stands for itself), so any value
    a breakdown row shows can be filtered on: `page:/a\;country\:ZZ` is one page. A property
    names its key after `prop:`, escaped alike: `prop:filter:oak`, `prop:a\:b:1`."""
    if raw is None or raw == "":
        return {}
    pairs: dict[str, str] = {}
    parts = _pairs(raw)
    if len(parts) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} `dimension:value` pairs")
    for part in parts:
        if part.startswith(properties.PREFIX):
            rest = part[len(properties.PREFIX) :]
            colon = _unescaped_colon(rest)
            if colon < 0:
                raise FilterError(f"{part!r} is not `prop:KEY:value`")
            dimension = properties.PREFIX + _unescape(rest[:colon])
            escaped = rest[colon + 1 :]
        else:
            dimension, colon_found, escaped = part.partition(":")
            if not colon_found:
                raise FilterError(f"{part!r} is not `dimension:value`")
        check_dimension(dimension)
        if dimension in pairs:
            raise FilterError(f"dimension {dimension!r} is given twice")
        value = _unescape(escaped)
        if len(value) > MAX_FILTER_VALUE_CHARS:
            raise FilterError(f"the value of {dimension!r} is over {MAX_FILTER_VALUE_CHARS} chars")
        pairs[dimension] = value
    return pairs


class Range(msgspec.Struct, frozen=True):
    from_: str = msgspec.field(name="from")
    to: str = ""
    timezone: str = ""


class PeriodStats(msgspec.Struct, kw_only=True, rename="camel"):
    range: Range
    visitors: int
    visitors_exact: bool
    sessions: int
    pageviews: int
    bounce_rate: float  # percent of sessions, two decimals
    visit_duration_seconds: float  # median, milliseconds resolution
    # False when sealed hours gave the median: up to 0.8% low (materialized/session_hours.py).
    visit_duration_exact: bool = True


class Overview(PeriodStats, kw_only=True, rename="camel"):
    previous: PeriodStats


class BreakdownRow(msgspec.Struct):
    value: str
    visitors: int
    pageviews: int
    # `prop:KEY` breakdowns only: the events (of `eventType` when given) with this value.
    events: int | msgspec.UnsetType = msgspec.UNSET


class Breakdown(msgspec.Struct, rename="camel"):
    dimension: str
    rows: list[BreakdownRow]


class Point(msgspec.Struct):
    t: str  # the bucket's start, ISO 8601 in REPORT_TIMEZONE
    visitors: int
    pageviews: int


class Timeseries(msgspec.Struct, rename="camel"):
    interval: Interval
    points: list[Point]


class Realtime(msgspec.Struct, rename="camel"):
    visitors: int
    pageviews_per_minute: list[int]


class _Where:
    """The WHERE clauses of a question over a range and a filter (raw events, stats_visits,
    stats_sessions), with their parameters."""

    def __init__(self, start: datetime, end: datetime, filters: Mapping[str, str]) -> None:
        self.parameters: dict[str, Any] = {"start": start, "end": end}
        self.filtered = bool(filters)
        self._raw_only = any(properties.key_of(d) is not None for d in filters)
        self._keys = 0
        clauses = []
        for n, (dimension, value) in enumerate(sorted(filters.items())):
            clauses.append(f"{self.expression(dimension)} = {{f{n}:String}}")
            self.parameters[f"f{n}"] = value
        self.matches = " AND ".join(clauses) or "1"  # over raw events or stats_visits
        self.filters = f"NOT is_bot AND {self.matches}"
        whole = whole_hours(start, end)
        if whole is not None:
            self.parameters["h1"], self.parameters["h2"] = whole
        # The hours the range cuts (the hours of its ends): sessions starting in them are told
        # apart by their exact start, which stats_sessions (keyed by hour) does not keep.
        self.parameters["e1"] = _floor_hour(start)
        self.parameters["e2"] = _floor_hour(end)
        self.aligned = start == self.parameters["e1"] and end == self.parameters["e2"]
        self.whole = whole
        self._session_level = set(filters) <= VISIT_DIMENSIONS

    def expression(self, dimension: str) -> str:
        """`dimension`'s value over a raw event (a property's key becomes a parameter)."""
        key = properties.key_of(dimension)
        if key is None:
            return DIMENSIONS[dimension]
        name = f"k{self._keys}"
        self._keys += 1
        self.parameters[name] = key
        return properties.value_sql(name)

    def rollup(self, dimension: str | None = None) -> str | None:
        """The rollup that answers this filter (and breakdown `dimension`) for the whole hours of
        the range: stats_visits when both are session-level, else stats_pages; None without a
        filter (the unfiltered rollups answer those), without a whole hour, or for a property
        (only raw events hold them)."""
        if not self.filtered or self.whole is None or self._raw_only:
            return None
        if self._session_level and (dimension is None or dimension in VISIT_DIMENSIONS):
            return "stats_visits"
        return "stats_pages"

    def visits(
        self, dimension: str | None = None, bucket: tuple[str, str] | None = None
    ) -> str | None:
        """(visitor, pageviews[, value]) rows of the range's events that match the filter, from
        a rollup for the whole hours and the raw events at the ends; the value is `dimension`'s,
        or the time bucket (`bucket`: its expression over the rollup's `hour`, then over a raw
        event). None when no rollup applies."""
        table = self.rollup(dimension)
        if table is None:
            return None
        value = raw_value = ""
        if dimension is not None:
            value = raw_value = f", toString({DIMENSIONS[dimension]}) AS value"
        elif bucket is not None:
            value, raw_value = f", {bucket[0]} AS value", f", {bucket[1]} AS value"
        return (
            f"SELECT visitor AS v, pageviews AS p{value} FROM {table}"
            f" WHERE {self.matches} AND hour >= {{h1:DateTime('UTC')}}"
            " AND hour < {h2:DateTime('UTC')}"
            f" UNION ALL SELECT {VISITOR} AS v, toUInt32(event_type = 'PAGEVIEW') AS p{raw_value}"
            f" FROM tracking_events WHERE {self.filters} AND ("
            "(received_at >= {start:DateTime('UTC')} AND received_at < {h1:DateTime('UTC')})"
            " OR (received_at >= {h2:DateTime('UTC')} AND received_at < {end:DateTime('UTC')}))"
        )

    @property
    def events(self) -> str:
        return (
            f"{self.filters} AND received_at >= {{start:DateTime('UTC')}}"
            " AND received_at < {end:DateTime('UTC')}"
        )

    @property
    def sessions(self) -> str:
        """Sessions that started in the range and hold an event matching the filter."""
        return self.sessions_among()

    def sessions_among(self, hours: str = "") -> str:
        """`sessions`, or with `hours` (the name of an Array(DateTime) parameter) only those
        that started in those hours: the ids a filter matches are then looked up there only."""
        among = among_raw = among_rollup = ""
        if hours:
            among = f" AND start_hour IN {{{hours}:Array(DateTime('UTC'))}}"
            among_rollup = f" AND toStartOfHour(started) IN {{{hours}:Array(DateTime('UTC'))}}"
            among_raw = (
                " AND toStartOfHour(ifNull(session_started_at, received_at))"
                f" IN {{{hours}:Array(DateTime('UTC'))}}"
            )
        started = "start_hour >= {start:DateTime('UTC')} AND start_hour < {end:DateTime('UTC')}"
        if not self.aligned:
            whole = (
                "start_hour >= {h1:DateTime('UTC')} AND start_hour < {h2:DateTime('UTC')}"
                if self.whole is not None
                else "0"
            )
            started = (
                f"({whole} OR (start_hour IN ({{e1:DateTime('UTC')}}, {{e2:DateTime('UTC')}})"
                " AND session_id IN (SELECT session_id FROM stats_visits"
                " WHERE hour >= {e1:DateTime('UTC')}"
                " AND started >= {start:DateTime('UTC')} AND started < {end:DateTime('UTC')}"
                " AND toStartOfHour(started) IN ({e1:DateTime('UTC')}, {e2:DateTime('UTC')}))))"
            )
        started += among
        if not self.filtered:
            return started
        began = (
            " AND ifNull(session_started_at, received_at) >= {start:DateTime('UTC')}"
            f" AND ifNull(session_started_at, received_at) < {{end:DateTime('UTC')}}{among_raw}"
        )
        table = self.rollup()
        if table is None:
            return (
                f"{started} AND session_id IN (SELECT session_id FROM tracking_events"
                f" WHERE {self.filters} AND received_at >= {{start:DateTime('UTC')}}{began})"
            )
        return (
            f"{started} AND session_id IN (SELECT session_id FROM {table}"
            f" WHERE {self.matches} AND hour >= {{h1:DateTime('UTC')}}"
            " AND started >= {start:DateTime('UTC')} AND started < {end:DateTime('UTC')}"
            f"{among_rollup}"
            f" UNION ALL SELECT session_id FROM tracking_events WHERE {self.filters}"
            " AND received_at >= {start:DateTime('UTC')} AND received_at < {h1:DateTime('UTC')}"
            f"{began})"
        )


def _sealed_rows(filters: Mapping[str, str]) -> session_hours.Rows | None:
    """The sealed rows that answer a long range's sessions under `filters`: the hours' own
    (with their histograms) without a filter, a dimension's values for one, the audiences for
    several on audience dimensions; None for any other filter (read per session) or a
    property (raw events)."""
    if not filters:
        return session_hours.Rows.VALUES
    if any(properties.key_of(d) is not None for d in filters):
        return None
    if len(filters) == 1:
        return session_hours.Rows.VALUES
    return session_hours.Rows.AUDIENCE if set(filters) <= AUDIENCE_DIMENSIONS else None


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hours(first: datetime, last: datetime) -> list[datetime]:
    """Every hour from `first` (on the hour) up to `last`."""
    return [first + timedelta(hours=n) for n in range(int((last - first).total_seconds()) // 3600)]


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole UTC hours inside [start, end), or None."""
    first, last = _floor_hour(start), _floor_hour(end)
    if first < start:
        first += timedelta(hours=1)
    return (first, last) if first < last else None


def _utc_days(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole UTC days inside [start, end), or None."""
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(days=1)
    last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    return (first, last) if first < last else None


def _sketch_rows(
    dimension: str, start: datetime, end: datetime, value: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A subquery of (value, visitors state, pageviews) covering [start, end): the day rollup
    for its whole UTC days, the hour rollup for its other whole hours, the raw events for the
    partial hours at its ends (the same sketch, so all merge); with `value`, that value's
    rows only."""
    expression = f"toString({DIMENSIONS[dimension]})" if dimension else "''"
    whole = whole_hours(start, end)
    h1, h2 = whole if whole is not None else (end, end)
    parameters: dict[str, Any] = {
        "dimension": dimension,
        "start": start,
        "end": end,
        "h1": h1,
        "h2": h2,
    }
    of_value = raw_value = ""
    if value is not None:
        parameters["value"] = value
        of_value = " AND value = {value:String}"
        raw_value = f" AND {expression} = {{value:String}}"
    raw = (
        f"SELECT {expression} AS value, uniqCombined64State(12)({VISITOR}) AS visitors,"
        " countIf(event_type = 'PAGEVIEW') AS pageviews FROM tracking_events"
        f" WHERE NOT is_bot{raw_value} AND ((received_at >= {{start:DateTime('UTC')}}"
        " AND received_at < {h1:DateTime('UTC')}) OR (received_at >= {h2:DateTime('UTC')}"
        " AND received_at < {end:DateTime('UTC')})) GROUP BY value"
    )
    hourly = (
        "SELECT value, visitors, toUInt64(pageviews) AS pageviews FROM stats_hourly"
        f" WHERE dimension = {{dimension:String}}{of_value}"
    )
    days = _utc_days(h1, h2)
    if days is None:
        rollups = f"{hourly} AND hour >= {{h1:DateTime('UTC')}} AND hour < {{h2:DateTime('UTC')}}"
    else:
        parameters["days_from"], parameters["days_to"] = days
        rollups = (
            "SELECT value, visitors, toUInt64(pageviews) AS pageviews FROM stats_daily"
            f" WHERE dimension = {{dimension:String}}{of_value}"
            " AND day >= {days_from:DateTime('UTC')} AND day < {days_to:DateTime('UTC')}"
            f" UNION ALL {hourly} AND ("
            "(hour >= {h1:DateTime('UTC')} AND hour < {days_from:DateTime('UTC')})"
            " OR (hour >= {days_to:DateTime('UTC')} AND hour < {h2:DateTime('UTC')}))"
        )
    if (h1, h2) == (start, end):
        return rollups, parameters  # no partial hour
    return f"{rollups} UNION ALL {raw}", parameters


def _audience_rows(where: _Where) -> str:
    """A subquery of (visitors state, pageviews) covering the range under filters on the
    audience only: stats_audience_hourly for its whole hours, the raw events for the partial
    hours at its ends (the same sketch, so all merge)."""
    raw = (
        f"SELECT uniqCombined64State(12)({VISITOR}) AS visitors,"
        " countIf(event_type = 'PAGEVIEW') AS pageviews FROM tracking_events WHERE "
    )
    if where.whole is None:
        return f"{raw}{where.events}"
    rollup = (
        "SELECT visitors, toUInt64(pageviews) AS pageviews FROM stats_audience_hourly"
        f" WHERE {where.matches} AND hour >= {{h1:DateTime('UTC')}}"
        " AND hour < {h2:DateTime('UTC')}"
    )
    if where.whole == (where.parameters["start"], where.parameters["end"]):
        return rollup
    return (
        f"{rollup} UNION ALL {raw}{where.filters} AND ((received_at >= {{start:DateTime('UTC')}}"
        " AND received_at < {h1:DateTime('UTC')}) OR (received_at >= {h2:DateTime('UTC')}"
        " AND received_at < {end:DateTime('UTC')}))"
    )


class Stats:
    def __init__(
        self,
        warehouse: Warehouse,
        zone: zoneinfo.ZoneInfo,
        exact_max_events: int = EXACT_VISITORS_MAX_EVENTS,
    ) -> None:
        self.warehouse = warehouse
        self.zone = zone
        self.exact_max_events = exact_max_events

    def _range(self, start: datetime, end: datetime) -> Range:
        return Range(
            start.astimezone(self.zone).isoformat(),
            end.astimezone(self.zone).isoformat(),
            self.zone.key,
        )

    async def _large(self, start: datetime, end: datetime) -> bool:
        """Whether the range holds more than exact_max_events events."""
        events = await self.warehouse.scalar(
            "SELECT sum(events) FROM tracking_events_hourly"
            " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}",
            {"start": start, "end": end},
        )
        return int(events or 0) > self.exact_max_events

    async def _exact(self, start: datetime, end: datetime, filters: Mapping[str, str]) -> bool:
        return bool(filters) or not await self._large(start, end)

    async def period(
        self, start: datetime, end: datetime, filters: Mapping[str, str]
    ) -> PeriodStats:
        where = _Where(start, end, filters)
        sealed_rows = _sealed_rows(filters)
        large = sealed_rows is not None and await self._large(start, end)
        # Visitors from sketches past the threshold, unfiltered, under one filter (the rollups
        # keep one per hour and value) or under several on the audience (one per hour and
        # audience); any other pair of filters needs the visits' ids.
        audience = len(filters) > 1 and set(filters) <= AUDIENCE_DIMENSIONS
        exact = not large or (len(filters) > 1 and not audience)
        visits = where.visits()
        if not exact and audience:
            totals = self.warehouse.rows(
                f"SELECT {SKETCH}, sum(pageviews) FROM ({_audience_rows(where)})",
                where.parameters,
            )
        elif not exact:
            dimension, value = next(iter(filters.items()), ("", None))
            rows, parameters = _sketch_rows(dimension, start, end, value)
            totals = self.warehouse.rows(
                f"SELECT {SKETCH}, sum(pageviews) FROM ({rows})", parameters
            )
        elif visits is not None:
            totals = self.warehouse.rows(
                f"SELECT uniqExact(v), sum(p) FROM ({visits})", where.parameters
            )
        else:
            totals = self.warehouse.rows(
                f"SELECT uniqExact({VISITOR}), countIf(event_type = 'PAGEVIEW')"
                f" FROM tracking_events WHERE {where.events}",
                where.parameters,
            )
        sealed: list[datetime] = []
        whole = where.whole
        if large and sealed_rows is not None and whole is not None:
            sealed = await session_hours.sealed(self.warehouse, *whole, sealed_rows)
        if sealed and whole is not None:
            # The sealed hours' sums, the rest from the sessions' rows, one merged median. The
            # rest named as the hours it is (not as "not sealed"), so that only their rows
            # are read: the hours the range cuts and the whole hours without a valid seal.
            ends = {where.parameters["e1"], where.parameters["e2"]}
            rest = sorted((set(_hours(*whole)) | ends) - set(sealed))
            parameters = {**where.parameters, "sealed": sealed, "rest": rest}
            sessions = self._sealed_sessions(where, filters, parameters)
        else:
            sessions = self.warehouse.rows(
                f"SELECT count(), countIf({session_hours.BOUNCE}),"
                f" quantileExactInclusive(0.5)({session_hours.DURATION_MS})"
                f" FROM stats_sessions FINAL WHERE {where.sessions}",
                where.parameters,
            )
        (found, started) = await asyncio.gather(totals, sessions)
        visitors, pageviews = found[0] if found else (0, 0)
        count, bounces, median_ms = started[0] if started else (0, 0, 0.0)
        count = int(count)
        return PeriodStats(
            range=self._range(start, end),
            visitors=int(visitors or 0),
            visitors_exact=exact,
            sessions=count,
            pageviews=int(pageviews or 0),
            bounce_rate=round(int(bounces) / count * 100, 2) if count else 0.0,
            visit_duration_seconds=(
                round(float(median_ms) / 1000, 3)
                if count and not math.isnan(float(median_ms))
                else 0.0
            ),
            visit_duration_exact=not sealed,
        )

    async def _sealed_sessions(
        self, where: _Where, filters: Mapping[str, str], parameters: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """[(sessions, bounces, median ms)]: each sealed hour's rows of its latest seal (its
        own without a filter, the filter's value's for one, the matching audiences' for
        several), the rest from the sessions' rows, their duration histograms added up."""
        table, matches = "stats_session_hours", "1"
        if len(filters) == 1:
            ((dimension, value),) = filters.items()
            table, matches = "stats_session_values", "dimension = {d:String} AND value = {v:String}"
            parameters = {**parameters, "d": dimension, "v": value}
        elif filters:
            table, matches = "stats_session_audience", where.matches
        rows = await self.warehouse.rows(
            "SELECT sum(n), sum(b), sumMap(d) FROM ("
            f" SELECT sessions AS n, bounces AS b, histogram AS d FROM {table}"
            f" WHERE start_hour IN {{sealed:Array(DateTime('UTC'))}} AND {matches}"
            " AND (start_hour, sealed_at) IN (SELECT start_hour, max(sealed_at)"
            " FROM stats_session_hours WHERE start_hour IN {sealed:Array(DateTime('UTC'))}"
            " GROUP BY start_hour)"
            f" UNION ALL SELECT count(), countIf({session_hours.BOUNCE}),"
            f" {session_hours.DURATION_HISTOGRAM} FROM stats_sessions FINAL"
            f" WHERE {where.sessions_among('rest')})",
            parameters,
        )
        count, bounces, histogram = rows[0]
        return [(count, bounces, session_hours.histogram_median(histogram))]

    async def overview(
        self, start: datetime, end: datetime, filters: Mapping[str, str]
    ) -> Overview:
        length = end - start
        now, before = await asyncio.gather(
            self.period(start, end, filters), self.period(start - length, start, filters)
        )
        return Overview(**msgspec.structs.asdict(now), previous=before)

    async def breakdown(
        self,
        dimension: str,
        start: datetime,
        end: datetime,
        filters: Mapping[str, str],
        limit: int,
        event_type: str | None = None,
    ) -> Breakdown:
        where = _Where(start, end, filters)
        if properties.key_of(dimension) is not None:
            return await self._property_breakdown(dimension, where, event_type, limit)
        visits = where.visits(dimension)
        if visits is not None:
            rows = await self.warehouse.rows(
                f"SELECT value, uniqExact(v) AS v, sum(p) AS p FROM ({visits}) GROUP BY value"
                " ORDER BY v DESC, p DESC, value LIMIT {limit:UInt32}",
                {**where.parameters, "limit": limit},
            )
        elif await self._exact(start, end, filters):
            rows = await self.warehouse.rows(
                f"SELECT toString({DIMENSIONS[dimension]}) AS value, uniqExact({VISITOR}) AS v,"
                f" countIf(event_type = 'PAGEVIEW') AS p FROM tracking_events"
                f" WHERE {where.events} GROUP BY value"
                " ORDER BY v DESC, p DESC, value LIMIT {limit:UInt32}",
                {**where.parameters, "limit": limit},
            )
        else:
            sketch_rows, parameters = _sketch_rows(dimension, start, end)
            rows = await self.warehouse.rows(
                f"SELECT value, {SKETCH} AS v, sum(pageviews) AS p FROM ({sketch_rows})"
                " GROUP BY value ORDER BY v DESC, p DESC, value LIMIT {limit:UInt32}",
                {**parameters, "limit": limit},
            )
        return Breakdown(
            dimension, [BreakdownRow(str(value), int(v), int(p)) for value, v, p in rows]
        )

    async def _property_breakdown(
        self, dimension: str, where: _Where, event_type: str | None, limit: int
    ) -> Breakdown:
        """The values of a property key over the raw events carrying it (of `event_type` when
        given) that match the filter: exact."""
        value = where.expression(dimension)
        of_type = " AND event_type = {event_type:String}" if event_type else ""
        rows = await self.warehouse.rows(
            f"SELECT value, uniqExact(visitor) AS v, countIf(event_type = 'PAGEVIEW') AS p,"
            f" count() AS e FROM (SELECT {value} AS value, {VISITOR} AS visitor, event_type"
            f" FROM tracking_events WHERE {where.events} AND properties != '{{}}'{of_type})"
            " WHERE value IS NOT NULL GROUP BY value"
            " ORDER BY v DESC, e DESC, value LIMIT {limit:UInt32}",
            {**where.parameters, "event_type": event_type or "", "limit": limit},
        )
        return Breakdown(
            dimension,
            [BreakdownRow(str(value), int(v), int(p), int(e)) for value, v, p, e in rows],
        )

    def buckets(self, start: datetime, end: datetime, interval: Interval) -> list[datetime]:
        """Every bucket's start (UTC) meeting [start, end): hours, or local days."""
        if interval is Interval.HOUR:
            return _hours(start, end)
        day = start.astimezone(self.zone).replace(hour=0, minute=0, second=0, microsecond=0)
        found: list[datetime] = []
        while True:
            # Re-localised from the calendar date, so 23- and 25-hour days start at midnight.
            moment = datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)
            if moment >= end:
                return found
            found.append(moment)
            day = (day.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=self.zone)

    async def timeseries(
        self, start: datetime, end: datetime, interval: Interval, filters: Mapping[str, str]
    ) -> Timeseries:
        zone = self.zone.key
        if interval is Interval.HOUR:
            bucket_raw, bucket_rollup = "toStartOfHour(received_at)", "hour"
        else:
            bucket_raw = f"toStartOfDay(received_at, '{zone}')"
            bucket_rollup = f"toStartOfDay(hour, '{zone}')"
        where = _Where(start, end, filters)
        visits = where.visits(bucket=(bucket_rollup, bucket_raw))
        if visits is not None:
            rows = await self.warehouse.rows(
                f"SELECT toUnixTimestamp(value) AS b, uniqExact(v), sum(p) FROM ({visits})"
                " GROUP BY b",
                where.parameters,
            )
        elif await self._exact(start, end, filters):
            rows = await self.warehouse.rows(
                f"SELECT toUnixTimestamp({bucket_raw}) AS b, uniqExact({VISITOR}),"
                f" countIf(event_type = 'PAGEVIEW') FROM tracking_events WHERE {where.events}"
                " GROUP BY b",
                where.parameters,
            )
        else:
            rows = await self.warehouse.rows(
                f"SELECT toUnixTimestamp({bucket_rollup}) AS b, {SKETCH}, sum(pageviews)"
                " FROM stats_hourly WHERE dimension = ''"
                " AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
                " GROUP BY b",
                {"start": start, "end": end},
            )
        found = {int(b): (int(v), int(p)) for b, v, p in rows}
        points = []
        for moment in self.buckets(start, end, interval):
            visitors, pageviews = found.get(int(moment.timestamp()), (0, 0))
            points.append(Point(moment.astimezone(self.zone).isoformat(), visitors, pageviews))
        return Timeseries(interval, points)

    async def realtime(self, now: datetime) -> Realtime:
        minute = now.astimezone(UTC).replace(second=0, microsecond=0)
        first = minute - timedelta(minutes=REALTIME_MINUTES - 1)
        since = now - timedelta(minutes=REALTIME_VISITOR_MINUTES)
        per_minute_rows, visitors_rows = await asyncio.gather(
            self.warehouse.rows(
                "SELECT toUnixTimestamp(toStartOfMinute(received_at)) AS m,"
                " countIf(event_type = 'PAGEVIEW') FROM tracking_events WHERE NOT is_bot"
                " AND received_at >= {first:DateTime64(3, 'UTC')}"
                " AND received_at <= {now:DateTime64(3, 'UTC')} GROUP BY m",
                {"first": first, "now": now},
            ),
            self.warehouse.rows(
                f"SELECT uniqExact({VISITOR}) FROM tracking_events WHERE NOT is_bot"
                " AND received_at >= {since:DateTime64(3, 'UTC')}"
                " AND received_at <= {now:DateTime64(3, 'UTC')}",
                {"since": since, "now": now},
            ),
        )
        per_minute = {int(m): int(p) for m, p in per_minute_rows}
        visitors = int(visitors_rows[0][0]) if visitors_rows else 0
        minutes = [int((first + timedelta(minutes=n)).timestamp()) for n in range(REALTIME_MINUTES)]
        return Realtime(visitors, [per_minute.get(m, 0) for m in minutes])
