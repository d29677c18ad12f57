"""An independent, plain-Python calculation of every dashboard widget and funnel step, from
the generated rows themselves; the service's answers must agree with it exactly."""

from __future__ import annotations

import decimal
import json
import re
import zoneinfo
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from cli.demo_traffic import Traffic
from materialized.funnels import PRODUCT_PAGE, Funnel


def _path(url: str) -> str:
    return "/" + url.split("lomashwood.co.uk/", 1)[1]


def _ms(moment: datetime) -> int:
    # ClickHouse keeps milliseconds: compare in the same unit.
    return int(moment.timestamp() * 1000)


def widgets(
    traffic: Traffic, start: datetime, end: datetime, zone: zoneinfo.ZoneInfo, now: datetime
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
        "eventsByType": dict(sorted(Counter(r.event_type for r in in_range).items())),
    }


def funnel_steps(
    traffic: Traffic, funnel: Funnel, start: datetime, end: datetime, window_seconds: int
) -> list[tuple[str, int]]:
    """windowFunnel's default mode, step by step (ClickHouse's AggregateFunctionWindowFunnel)."""
    s, e, window = _ms(start), _ms(end), window_seconds * 1000
    product_page = re.compile(PRODUCT_PAGE)
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
                and (not step.product_page or product_page.match(path))
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
