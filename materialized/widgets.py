"""Dashboard widgets, answered from the hourly rollups (never a scan of raw events).

Every rollup is bucketed by UTC hour; Europe/London (any zone with whole-hour offsets) cuts its
days, weeks and months on UTC hour boundaries, so a local-day total is an exact sum of hours.
A range is therefore taken at hour granularity: `from` rounded down, `to` rounded up.
"""

from __future__ import annotations

import asyncio
import decimal
import zoneinfo
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from core.clickhouse import Warehouse
from core.settings import PRODUCT_PAGE_PATTERN

TOP_PRODUCTS = 10
# Sums of Decimal(38, 6) amounts: Python's default 28 digits would round them.
EXACT = decimal.Context(prec=100)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floored = floor_hour(moment)
    return floored if floored == moment.astimezone(UTC) else floored + timedelta(hours=1)


def money(amount: decimal.Decimal) -> str:
    """Exact, with at least two decimals: 101 -> "101.00", 0.125 -> "0.125"."""
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)
    return f"{amount:.2f}" if exponent >= -2 else format(normal, "f")


def local_periods(now: datetime, zone: zoneinfo.ZoneInfo) -> dict[str, datetime]:
    """Start of today, this week (Monday) and this month in the zone, as UTC instants."""
    local = now.astimezone(zone)
    today = local.replace(hour=0, minute=0, second=0, microsecond=0)
    week = today - timedelta(days=today.weekday())
    month = today.replace(day=1)

    def utc(day: datetime) -> datetime:
        # Re-localise the wall-clock midnight: the offset may differ from `now`'s (DST).
        return day.replace(tzinfo=None).replace(tzinfo=zone).astimezone(UTC)

    return {"today": utc(today), "week": utc(week), "month": utc(month)}


async def compute(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    *,
    zone: zoneinfo.ZoneInfo,
    now: datetime,
    product_page: str = PRODUCT_PAGE_PATTERN,
) -> dict[str, Any]:
    start, end = floor_hour(start), ceil_hour(end)
    rng = {"start": start, "end": end}
    periods = local_periods(now, zone)
    since = min(periods.values())
    (
        by_type,
        domain,
        bookings_now,
        products,
        blog,
        customers,
        conversion,
        product_pages,
    ) = await asyncio.gather(
        warehouse.rows(
            "SELECT event_type, sum(events) FROM tracking_events_hourly"
            " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
            " GROUP BY event_type ORDER BY event_type",
            rng,
        ),
        warehouse.rows(
            "SELECT event_type, currency, sum(events), sum(amount) FROM domain_events_hourly"
            " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
            " GROUP BY event_type, currency",
            rng,
        ),
        warehouse.rows(
            "SELECT sumIf(events, hour >= {today:DateTime('UTC')}),"
            " sumIf(events, hour >= {week:DateTime('UTC')}),"
            " sumIf(events, hour >= {month:DateTime('UTC')})"
            " FROM domain_events_hourly"
            " WHERE event_type = 'booking-created' AND hour >= {since:DateTime('UTC')}",
            {**periods, "since": since},
        ),
        warehouse.rows(
            "SELECT product_id, sum(views) AS v FROM product_views_hourly"
            " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
            f" GROUP BY product_id ORDER BY v DESC, product_id LIMIT {TOP_PRODUCTS}",
            rng,
        ),
        warehouse.scalar(
            "SELECT sum(views) FROM blog_views_hourly"
            " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}",
            rng,
        ),
        warehouse.rows(
            "SELECT countIf(first >= {start:DateTime('UTC')}),"
            " countIf(first < {start:DateTime('UTC')})"
            " FROM (SELECT customer_id, minMerge(first_order) AS first FROM customer_first_order"
            "  WHERE customer_id IN (SELECT customer_id FROM customer_orders_hourly"
            "   WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')})"
            "  GROUP BY customer_id)",
            rng,
        ),
        warehouse.dicts(
            "SELECT funnel, period_start, period_end, window_seconds, step_names, step_counts,"
            " conversion_rate, computed_at FROM funnels"
            " ORDER BY computed_at DESC LIMIT 1 BY funnel"
        ),
        # Pageviews per path per hour are rolled up already (bots excluded), so the pattern
        # is matched against distinct paths, not against raw events.
        warehouse.scalar(
            "SELECT sum(pageviews) FROM stats_hourly WHERE dimension = 'page'"
            " AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
            " AND match(value, {pattern:String})",
            {**rng, "pattern": product_page},
        ),
    )
    counts: dict[str, int] = defaultdict(int)
    amounts: dict[str, dict[str, decimal.Decimal]] = defaultdict(dict)
    for event_type, currency, events, amount in domain:
        counts[event_type] += int(events)
        if currency:
            amounts[event_type][currency] = EXACT.add(
                amounts[event_type].get(currency, decimal.Decimal(0)), amount
            )
    # The spec: average order value is payment-succeeded revenue / successful payments.
    payment_counts: dict[str, int] = defaultdict(int)
    for event_type, currency, events, _ in domain:
        if event_type == "payment-succeeded" and currency:
            payment_counts[currency] += int(events)
    today, week, month = bookings_now[0] if bookings_now else (0, 0, 0)
    new, returning = customers[0] if customers else (0, 0)
    return {
        "range": {"from": start.isoformat(), "to": end.isoformat(), "timezone": zone.key},
        "bookings": {
            "inRange": counts["booking-created"],
            "cancelledInRange": counts["booking-cancelled"],
            "today": int(today or 0),
            "thisWeek": int(week or 0),
            "thisMonth": int(month or 0),
        },
        "orders": {
            "count": counts["order-created"],
            "revenue": {
                cur: money(total) for cur, total in sorted(amounts["payment-succeeded"].items())
            },
            "averageOrderValue": {
                cur: money(
                    EXACT.divide(total, payment_counts[cur]).quantize(
                        decimal.Decimal("0.01"), context=EXACT
                    )
                )
                for cur, total in sorted(amounts["payment-succeeded"].items())
                if payment_counts[cur]
            },
        },
        "topProducts": [{"productId": p, "views": int(v)} for p, v in products],
        "customers": {"new": int(new), "returning": int(returning)},
        "brochureRequests": counts["brochure-request-submitted"],
        "newsletterSignups": counts["newsletter-subscription-created"],
        "blogViews": int(blog or 0),
        "productPageViews": int(product_pages or 0),
        "eventsByType": {event_type: int(n) for event_type, n in by_type},
        "domainEventsByType": {t: n for t, n in sorted(counts.items()) if n},
        "conversion": {
            row["funnel"]: {
                "periodStart": row["period_start"].replace(tzinfo=UTC).isoformat(),
                "periodEnd": row["period_end"].replace(tzinfo=UTC).isoformat(),
                "windowSeconds": row["window_seconds"],
                "steps": [
                    {"name": n, "count": int(c)}
                    for n, c in zip(row["step_names"], row["step_counts"], strict=True)
                ],
                "conversionRate": row["conversion_rate"],
                "computedAt": row["computed_at"].replace(tzinfo=UTC).isoformat(),
            }
            for row in conversion
        },
    }


# The shape of compute()'s answer, for the API's document and to check it on the way out.


class WidgetRange(msgspec.Struct, frozen=True):
    from_: str = msgspec.field(name="from")
    to: str = ""
    timezone: str = ""


class BookingsWidget(msgspec.Struct, rename="camel"):
    in_range: int
    cancelled_in_range: int
    today: int
    this_week: int
    this_month: int


class OrdersWidget(msgspec.Struct, rename="camel"):
    count: int
    revenue: dict[str, str]  # currency -> exact decimal string
    average_order_value: dict[str, str]


class TopProduct(msgspec.Struct, rename="camel"):
    product_id: str
    views: int


class CustomersWidget(msgspec.Struct):
    new: int
    returning: int


class NamedStep(msgspec.Struct):
    name: str
    count: int


class ConversionWidget(msgspec.Struct, rename="camel"):
    period_start: str
    period_end: str
    window_seconds: int
    steps: list[NamedStep]
    conversion_rate: float
    computed_at: str


class Widgets(msgspec.Struct, rename="camel"):
    range: WidgetRange
    bookings: BookingsWidget
    orders: OrdersWidget
    top_products: list[TopProduct]
    customers: CustomersWidget
    brochure_requests: int
    newsletter_signups: int
    blog_views: int
    events_by_type: dict[str, int]  # browser (tracking) events by type, bots excluded
    conversion: dict[str, ConversionWidget]  # by funnel: booking, checkout
    # PAGEVIEWs of paths matching PRODUCT_PAGE_PATTERN, bots excluded; null in a snapshot saved
    # before the widget existed (the stale fallback).
    product_page_views: int | None = None
    # Domain events stored, by type (order-created, booking-created, ...).
    domain_events_by_type: dict[str, int] | None = None


class DashboardAnswer(msgspec.Struct, rename="camel", omit_defaults=True):
    computed_at: str
    stale: bool
    widgets: Widgets
    age_seconds: int | None = None  # stale answers: how old the snapshot is
