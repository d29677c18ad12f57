"""An independent, plain-Python calculation of every dashboard widget and funnel step, from
the generated rows themselves; the service's answers must agree with it exactly."""

from __future__ import annotations

import decimal
import json
import math
import re
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cli.demo_traffic import Traffic, generate, load
from core.clickhouse import Warehouse
from core.settings import PRODUCT_PAGE_PATTERN as PRODUCT_PAGE
from materialized.funnel_chains import ChainStep
from materialized.funnels import Funnel
from tracked.row import TrackingRow


def _path(url: str) -> str:
    return "/" + url.split("lomashwood.co.uk/", 1)[1]


def _ms(moment: datetime) -> int:
    # ClickHouse keeps milliseconds: compare in the same unit.
    return int(moment.timestamp() * 1000)


def widgets(
    traffic: Traffic,
    start: datetime,
    end: datetime,
    zone: zoneinfo.ZoneInfo,
    now: datetime,
    product_page: str = PRODUCT_PAGE,
) -> dict[str, Any]:
    s, e = _ms(start), _ms(end)
    human = [r for r in traffic.tracking if not r.is_bot]
    in_range = [r for r in human if s <= _ms(r.received_at) < e]
    domain = [r for r in traffic.domain if s <= _ms(r.occurred_at) < e]
    counts = Counter(r.event_type for r in domain)
    revenue: dict[str, decimal.Decimal] = defaultdict(decimal.Decimal)
    payment_counts: Counter[str] = Counter()
    for r in domain:
        if r.event_type == "payment-succeeded":
            revenue[r.currency] += r.amount or 0
            payment_counts[r.currency] += 1

    local = now.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = {
        "today": midnight,
        "week": midnight - timedelta(days=midnight.weekday()),
        "month": midnight.replace(day=1),
    }
    bookings = [r for r in traffic.domain if r.event_type == "booking-created"]

    def bookings_since(local_midnight: datetime) -> int:
        begin = local_midnight.replace(tzinfo=None).replace(tzinfo=zone)
        return sum(1 for r in bookings if r.occurred_at >= begin)

    views = Counter(
        json.loads(r.properties).get("productId", "")
        for r in in_range
        if r.event_type == "PRODUCT_VIEW"
    )
    views.pop("", None)
    top = sorted(views.items(), key=lambda kv: (-kv[1], kv[0]))[:10]

    first_order: dict[Any, datetime] = {}
    for r in traffic.domain:
        if r.event_type == "order-created" and r.customer_id is not None:
            seen = first_order.get(r.customer_id)
            first_order[r.customer_id] = min(seen, r.occurred_at) if seen else r.occurred_at
    ordering = {r.customer_id for r in domain if r.event_type == "order-created" and r.customer_id}
    new = sum(1 for c in ordering if _ms(first_order[c]) >= s)

    def money(amount: decimal.Decimal) -> str:
        return f"{amount:.2f}"

    return {
        "bookings": {
            "inRange": counts["booking-created"],
            "cancelledInRange": counts["booking-cancelled"],
            "today": bookings_since(starts["today"]),
            "thisWeek": bookings_since(starts["week"]),
            "thisMonth": bookings_since(starts["month"]),
        },
        "orders": {
            "count": counts["order-created"],
            "revenue": {c: money(v) for c, v in sorted(revenue.items())},
            "averageOrderValue": {
                c: money((revenue[c] / payment_counts[c]).quantize(decimal.Decimal("0.01")))
                for c in sorted(revenue)
            },
        },
        "topProducts": [{"productId": p, "views": v} for p, v in top],
        "customers": {"new": new, "returning": len(ordering) - new},
        "brochureRequests": counts["brochure-request-submitted"],
        "newsletterSignups": counts["newsletter-subscription-created"],
        "blogViews": sum(
            1
            for r in in_range
            if r.event_type == "PAGEVIEW"
            and r.url.split("lomashwood.co.uk", 1)[1].startswith(("/blog/", "/v1/blog/"))
        ),
        "productPageViews": sum(
            1
            for r in in_range
            if r.event_type == "PAGEVIEW" and re.search(product_page, _path(r.url))
        ),
        "eventsByType": dict(sorted(Counter(r.event_type for r in in_range).items())),
        "domainEventsByType": dict(sorted(counts.items())),
    }


def funnel_steps(
    traffic: Traffic,
    funnel: Funnel,
    start: datetime,
    end: datetime,
    window_seconds: int,
    product_page_pattern: str = PRODUCT_PAGE,
) -> list[tuple[str, int]]:
    """windowFunnel's default mode, step by step (ClickHouse's AggregateFunctionWindowFunnel)."""
    s, e, window = _ms(start), _ms(end), window_seconds * 1000
    product_page = re.compile(product_page_pattern)
    per_visitor: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in traffic.tracking:
        if r.is_bot or not s <= _ms(r.occurred_at) < e:
            continue
        path = _path(r.url)
        visitor = str(r.user_id) if r.user_id else str(r.session_id)
        for index, step in enumerate(funnel.steps, start=1):
            if (
                step.source == "tracking"
                and step.event_type == r.event_type
                and (not step.product_page or product_page.search(path))
            ):
                per_visitor[visitor].append((_ms(r.occurred_at), index))
    for r in traffic.domain:
        if r.customer_id is None or not s <= _ms(r.occurred_at) < e:
            continue
        for index, step in enumerate(funnel.steps, start=1):
            if step.source == "domain" and step.event_type == r.event_type:
                per_visitor[str(r.customer_id)].append((_ms(r.occurred_at), index))
    levels = Counter()
    size = len(funnel.steps)
    for events in per_visitor.values():
        events.sort()
        reached: list[int | None] = [None] * size  # first-event timestamp of each step's chain
        level = 0
        for ts, index in events:
            i = index - 1
            if i == 0:
                reached[0] = ts
            elif reached[i - 1] is not None and ts <= reached[i - 1] + window:  # type: ignore[operator]
                reached[i] = reached[i - 1]
                if i + 1 == size:
                    level = size
                    break
        if level != size:
            level = max((k + 1 for k in range(size) if reached[k] is not None), default=0)
        if level:
            levels[level] += 1
    return [
        (step.name, sum(n for lv, n in levels.items() if lv >= k))
        for k, step in enumerate(funnel.steps, start=1)
    ]


def as_utc(day: str, zone: zoneinfo.ZoneInfo) -> datetime:
    """Local midnight of `day` (YYYY-MM-DD) in the zone, as a UTC instant."""
    return datetime.fromisoformat(day).replace(tzinfo=zone).astimezone(UTC)


# The stats API, from the rows themselves (materialized/stats.py says the definitions).


def _host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host[4:] if host.startswith("www.") else host


STATS_DIMENSIONS: dict[str, Callable[[TrackingRow], str]] = {
    "page": lambda r: urlsplit(r.url).path,
    "entry_page": lambda r: urlsplit(r.landing_page).path,
    "referrer": lambda r: _host(r.entry_referrer),
    "utm_source": lambda r: r.utm_source,
    "utm_medium": lambda r: r.utm_medium,
    "utm_campaign": lambda r: r.utm_campaign,
    "country": lambda r: r.country,
    "city": lambda r: r.city,
    "device": lambda r: r.device_type,
    "browser": lambda r: r.browser,
    "os": lambda r: r.os,
    "event_type": lambda r: r.event_type,
}


def _shortest(number: float) -> str:
    """A double as ClickHouse writes it: the shortest digits that read back the same, plain
    from 1e-6 up to 1e21 and with an exponent outside (`1.5e-7`, `1e21`), `-0` kept."""
    if number == 0:
        return "-0" if math.copysign(1, number) < 0 else "0"
    sign = "-" if number < 0 else ""
    exact = decimal.Decimal(repr(abs(number))).as_tuple()
    point = len(exact.digits) + int(exact.exponent)  # digits before the decimal point
    digits = "".join(map(str, exact.digits)).rstrip("0") or "0"
    if len(digits) <= point <= 21:
        text = digits + "0" * (point - len(digits))
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        text = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "") + f"e{point - 1}"
    return sign + text


def _integer(text: str) -> str:
    """An integer as ClickHouse reads it: 64-bit ones as numbers, longer ones as written."""
    value = int(text)
    return str(value) if -(2**63) <= value < 2**64 else text


_NO_VALUE = object()  # null, an object or an array: not a value


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def properties_of(r: TrackingRow) -> dict[str, Any]:
    """An event's properties, each scalar as the text a breakdown shows (numbers in ClickHouse's
    form, booleans `true`/`false`), anything else _NO_VALUE; a repeated key read at its first."""

    def scalar(value: Any) -> Any:
        if isinstance(value, str):
            return value
        if value is True or value is False:
            return "true" if value else "false"
        return _NO_VALUE

    decoded = json.loads(
        r.properties,
        parse_int=lambda text: ("int", _integer(text)),
        parse_float=lambda text: ("float", _shortest(float(text))),
        object_pairs_hook=_first_wins,
    )
    return {
        key: value[1] if isinstance(value, tuple) else scalar(value)
        for key, value in decoded.items()
    }


def dimension_value(r: TrackingRow, dimension: str) -> str | None:
    """A row's value of a dimension; None for a property it does not carry as a scalar."""
    if dimension.startswith("prop:"):
        value = properties_of(r).get(dimension[5:], _NO_VALUE)
        return None if value is _NO_VALUE else str(value)
    return STATS_DIMENSIONS[dimension](r)


def _matches(r: TrackingRow, filters: dict[str, str]) -> bool:
    return all(dimension_value(r, d) == v for d, v in filters.items())


def _visitor(r: TrackingRow) -> Any:
    return r.user_id or r.session_id


def _events(
    traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> list[TrackingRow]:
    s, e = _ms(start), _ms(end)
    return [
        r
        for r in traffic.tracking
        if not r.is_bot and s <= _ms(r.received_at) < e and _matches(r, filters)
    ]


def _median(values: list[int]) -> float:
    """quantileExactInclusive(0.5): linear between the two middle values."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * 0.5
    low = int(h)
    if low + 1 >= len(ordered):
        return float(ordered[low])
    return ordered[low] + (h - low) * (ordered[low + 1] - ordered[low])


def _counted_sessions(
    traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> list[list[TrackingRow]]:
    """The sessions the stats count: started in [start, end), with an event matching."""
    s, e = _ms(start), _ms(end)
    sessions: dict[Any, list[TrackingRow]] = defaultdict(list)
    for r in traffic.tracking:
        if r.is_bot:
            continue
        began = r.session_started_at or r.received_at
        hour = began.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        sessions[(hour, r.session_id)].append(r)
    counted = []
    for (_, _), rows in sessions.items():
        began = rows[0].session_started_at or rows[0].received_at
        if not s <= _ms(began) < e:
            continue
        if filters and not any(_matches(r, filters) and _ms(r.received_at) >= s for r in rows):
            continue
        counted.append(rows)
    return counted


def session_durations_ms(
    traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> list[int]:
    """Each counted session's last event - first event, in milliseconds."""
    return [
        max(_ms(r.occurred_at) for r in rows) - min(_ms(r.occurred_at) for r in rows)
        for rows in _counted_sessions(traffic, start, end, filters)
    ]


def stats_period(
    traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> dict[str, Any]:
    events = _events(traffic, start, end, filters)
    counted = _counted_sessions(traffic, start, end, filters)
    bounces = sum(1 for rows in counted if len(rows) == 1 and rows[0].event_type == "PAGEVIEW")
    durations = session_durations_ms(traffic, start, end, filters)
    return {
        "visitors": len({_visitor(r) for r in events}),
        "sessions": len(counted),
        "pageviews": sum(1 for r in events if r.event_type == "PAGEVIEW"),
        "bounceRate": round(bounces / len(counted) * 100, 2) if counted else 0.0,
        "visitDurationSeconds": round(_median(durations) / 1000, 3) if counted else 0.0,
    }


def stats_breakdown(
    traffic: Traffic,
    dimension: str,
    start: datetime,
    end: datetime,
    filters: dict[str, str],
    limit: int,
    event_type: str | None = None,
) -> list[dict[str, Any]]:
    visitors: dict[str, set[Any]] = defaultdict(set)
    pageviews: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for r in _events(traffic, start, end, filters):
        if event_type is not None and r.event_type != event_type:
            continue
        value = dimension_value(r, dimension)
        if value is None:
            continue
        visitors[value].add(_visitor(r))
        pageviews[value] += r.event_type == "PAGEVIEW"
        events[value] += 1
    rows: list[dict[str, Any]] = [
        {"value": v, "visitors": len(visitors[v]), "pageviews": pageviews[v]} for v in visitors
    ]
    if dimension.startswith("prop:"):
        for row in rows:
            row["events"] = events[row["value"]]
        rows.sort(key=lambda row: (-row["visitors"], -row["events"], row["value"].encode()))
    else:
        rows.sort(key=lambda row: (-row["visitors"], -row["pageviews"], row["value"]))
    return rows[:limit]


def property_keys(
    traffic: Traffic, start: datetime, end: datetime, event_type: str | None, limit: int
) -> list[dict[str, Any]]:
    counted: Counter[str] = Counter()
    for r in _events(traffic, start, end, {}):
        if event_type is None or r.event_type == event_type:
            counted.update(set(properties_of(r)) - {""})
    ordered = sorted(counted.items(), key=lambda item: (-item[1], item[0].encode()))
    return [{"key": key, "events": n} for key, n in ordered[:limit]]


def stats_days(
    traffic: Traffic,
    start: datetime,
    end: datetime,
    zone: zoneinfo.ZoneInfo,
    filters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per local day of the zone meeting [start, end): its start and its numbers."""
    day = start.astimezone(zone).date()
    points = []
    while True:
        begin = datetime(day.year, day.month, day.day, tzinfo=zone)
        if begin.astimezone(UTC) >= end:
            return points
        next_day = day + timedelta(days=1)
        finish = datetime(next_day.year, next_day.month, next_day.day, tzinfo=zone)
        events = _events(
            traffic,
            max(begin.astimezone(UTC), start),
            min(finish.astimezone(UTC), end),
            filters or {},
        )
        points.append(
            {
                "t": begin.isoformat(),
                "hours": (finish.astimezone(UTC) - begin.astimezone(UTC)).total_seconds() / 3600,
                "visitors": len({_visitor(r) for r in events}),
                "pageviews": sum(1 for r in events if r.event_type == "PAGEVIEW"),
            }
        )
        day = next_day


def around_2026_clock_changes(sessions_per_day: int, seeds: tuple[int, int]) -> Traffic:
    """A week around each UK clock change of 2026: 29 March (GMT -> BST), 25 October (back)."""
    spring = generate(datetime(2026, 3, 25, tzinfo=UTC), 8, sessions_per_day, seeds[0])
    autumn = generate(datetime(2026, 10, 21, tzinfo=UTC), 7, sessions_per_day, seeds[1])
    return Traffic(spring.tracking + autumn.tracking, spring.domain + autumn.domain)


async def load_past(warehouse: Warehouse, traffic: Traffic) -> None:
    """Store traffic of fixed past dates (no TTL drops raw events older than 90 days: only the
    verified purge removes them)."""
    await load(warehouse, traffic)


def funnel_chain(
    traffic: Traffic,
    steps: tuple[ChainStep, ...],
    start: datetime,
    end: datetime,
    window_seconds: int,
) -> list[dict[str, Any]]:
    """The chains of materialized/funnel_chains.py, step by step: counts, drop-off, medians."""
    s, e, window = _ms(start), _ms(end), window_seconds * 1000
    per_visitor: dict[str, list[tuple[int, int, int, list[int]]]] = defaultdict(list)

    def add(visitor: str, ts: int, event_id: str, matched: list[int]) -> None:
        # Ties in time by the first step matched, then by the steps matched (as bits): events
        # equal in all three act alike, so their order does not matter.
        if matched:
            bits = sum(1 << (i - 1) for i in matched)
            per_visitor[visitor].append((ts, min(matched), bits, matched))

    for r in traffic.tracking:
        if r.is_bot or not s <= _ms(r.occurred_at) < e:
            continue
        path, props = _path(r.url), properties_of(r)
        add(
            str(r.user_id or r.session_id),
            _ms(r.occurred_at),
            str(r.event_id),
            [
                i
                for i, step in enumerate(steps, start=1)
                if step.source == "tracking"
                and step.event_type == r.event_type
                and (not step.page_regex or re.search(step.page_regex, path))
                and all(props.get(k, _NO_VALUE) == v for k, v in step.properties)
            ],
        )
    for d in traffic.domain:
        if d.customer_id is None or not s <= _ms(d.occurred_at) < e:
            continue
        matched = [
            i
            for i, step in enumerate(steps, start=1)
            if step.source == "domain" and step.event_type == d.event_type
        ]
        add(str(d.customer_id), _ms(d.occurred_at), str(d.event_id), matched)
    size = len(steps)
    furthest: list[list[int]] = []
    for events in per_visitor.values():
        chains: list[list[int]] = [[] for _ in range(size)]
        for ts, _, _, matched in sorted(events):
            if chains[-1]:
                break
            moved = list(chains)
            for i in matched:
                if i == 1:
                    moved[0] = [ts]
                elif chains[i - 2] and ts <= chains[i - 2][0] + window:
                    moved[i - 1] = [*chains[i - 2], ts]
            chains = moved
        reached = sum(1 for chain in chains if chain)
        if reached:
            furthest.append(chains[reached - 1])
    rows: list[dict[str, Any]] = []
    for k, step in enumerate(steps, start=1):
        times = [chain for chain in furthest if len(chain) >= k]
        gaps = [chain[k - 1] - chain[k - 2] for chain in times] if k > 1 else []
        rows.append(
            {
                "step": step.name,
                "count": len(times),
                "dropOff": rows[-1]["count"] - len(times) if rows else 0,
                "medianSecondsFromPrevious": round(_median(gaps) / 1000, 3) if gaps else None,
            }
        )
    return rows


def _week(moment: datetime, zone: zoneinfo.ZoneInfo) -> date:
    day = moment.astimezone(zone).date()
    return day - timedelta(days=day.weekday())


def retention(
    traffic: Traffic,
    by: str,
    start: datetime,
    end: datetime,
    zone: zoneinfo.ZoneInfo,
    weeks: int,
) -> dict[str, Any]:
    """Weekly cohorts, counted member by member (materialized/retention.py says what counts)."""
    s, e = _ms(start), _ms(end)
    active: dict[Any, set[date]] = defaultdict(set)
    cohort_of: dict[Any, date] = {}
    if by == "visit":
        for r in traffic.tracking:
            if not r.is_bot and s <= _ms(r.received_at) < e:
                active[_visitor(r)].add(_week(r.received_at, zone))
        cohort_of = {member: min(seen) for member, seen in active.items()}
    else:
        first: dict[Any, datetime] = {}
        for d in traffic.domain:
            if d.event_type != "order-created" or d.customer_id is None:
                continue
            if d.customer_id not in first or d.occurred_at < first[d.customer_id]:
                first[d.customer_id] = d.occurred_at
            if s <= _ms(d.occurred_at) < e:
                active[d.customer_id].add(_week(d.occurred_at, zone))
        cohort_of = {c: _week(at, zone) for c, at in first.items() if s <= _ms(at) < e}
    cohorts = []
    week = _week(start, zone)
    while datetime(week.year, week.month, week.day, tzinfo=zone) < end:
        members = [m for m, c in cohort_of.items() if c == week]
        returning = []
        for k in range(1, weeks + 1):
            later = week + timedelta(weeks=k)
            if datetime(later.year, later.month, later.day, tzinfo=zone) >= end:
                break
            returning.append(sum(1 for m in members if later in active[m]))
        cohorts.append({"week": week.isoformat(), "size": len(members), "returning": returning})
        week += timedelta(weeks=1)
    return {"by": by, "cohorts": cohorts}


def journeys(
    traffic: Traffic,
    start: datetime,
    end: datetime,
    *,
    entry: str | None = None,
    goal: str | None = None,
    steps: int = 3,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Journeys session by session (materialized/journeys.py says what a journey is)."""
    s, e = _ms(start), _ms(end)
    sessions: dict[tuple[Any, int], list[TrackingRow]] = defaultdict(list)
    for r in traffic.tracking:
        began = _ms(r.session_started_at or r.received_at)
        received = _ms(r.received_at)
        if r.is_bot or not s <= began < e or not began - 3_600_000 <= received < began + 86_400_000:
            continue
        sessions[(r.session_id, began)].append(r)
    visitors: dict[tuple[str, ...], set[Any]] = defaultdict(set)
    for (session_id, _), rows in sessions.items():
        rows.sort(key=lambda r: (_ms(r.occurred_at), str(r.event_id)))
        viewed = [r for r in rows if r.event_type == "PAGEVIEW"]
        if entry is not None:
            if urlsplit(rows[0].landing_page).path != entry:
                continue
            seen = [urlsplit(r.url).path for r in viewed]
        else:
            goals = [r for r in rows if r.event_type == goal]
            if not goals:
                continue
            at = _ms(goals[0].occurred_at)
            seen = [urlsplit(r.url).path for r in viewed if _ms(r.occurred_at) <= at]
        collapsed = [p for i, p in enumerate(seen) if i == 0 or p != seen[i - 1]]
        if entry is not None:
            if collapsed and collapsed[0] == entry:
                collapsed = collapsed[1:]
            pages = collapsed[:steps]
        else:
            pages = collapsed[-steps:]
        if pages:
            who = next((r.user_id for r in rows if r.user_id is not None), session_id)
            visitors[tuple(pages)].add(who)
    ordered = sorted(
        visitors.items(), key=lambda item: (-len(item[1]), [p.encode() for p in item[0]])
    )
    return [{"pages": list(pages), "visitors": len(who)} for pages, who in ordered[:limit]]
