"""The booking and checkout funnels, computed with ClickHouse's windowFunnel.

A funnel follows one visitor: the userId when known, else the sessionId; domain events count
for their customerId, which is the same id as a browser event's userId. Per visitor,
windowFunnel(window) finds the furthest step reached by a chain that starts at a first-step
event and takes each next step, in order of event time, no later than `window` after that
chain's first event (events at the same millisecond are taken in step order). Step k's count
is the number of visitors who reached at least step k. Bots are excluded. Browser events are
timed by `occurred_at` (the client clock where it can be believed), domain events by their
envelope timestamp; only events inside the period count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from core.clickhouse import Warehouse
from core.contracts import FunnelCompleted, FunnelStep
from core.limits import TRUST_CLIENT_FUTURE, TRUST_CLIENT_PAST
from core.settings import PRODUCT_PAGE_PATTERN

DEFAULT_WINDOW_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    source: str  # "tracking" or "domain"
    event_type: str
    product_page: bool = False


@dataclass(frozen=True, slots=True)
class Funnel:
    name: str
    steps: tuple[Step, ...]


FUNNELS: dict[str, Funnel] = {
    "booking": Funnel(
        "booking",
        (
            Step("PAGEVIEW", "tracking", "PAGEVIEW", product_page=True),
            Step("BOOKING_START", "tracking", "BOOKING_START"),
            Step("BOOKING_COMPLETE", "tracking", "BOOKING_COMPLETE"),
        ),
    ),
    "checkout": Funnel(
        "checkout",
        (
            Step("PRODUCT_VIEW", "tracking", "PRODUCT_VIEW"),
            Step("ADD_TO_WISHLIST", "tracking", "ADD_TO_WISHLIST"),
            Step("order-created", "domain", "order-created"),
            Step("payment-succeeded", "domain", "payment-succeeded"),
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class FunnelResult:
    funnel: str
    period_start: datetime
    period_end: datetime
    window_seconds: int
    steps: list[tuple[str, int]]

    @property
    def conversion_rate(self) -> float:
        first, last = self.steps[0][1], self.steps[-1][1]
        return round(last / first * 100, 2) if first else 0.0

    @property
    def published_name(self) -> Literal["BOOKING", "CHECKOUT"]:
        return "BOOKING" if self.funnel == "booking" else "CHECKOUT"

    @property
    def published_steps(self) -> list[FunnelStep]:
        return [FunnelStep(name, count) for name, count in self.steps]

    def as_payload(self, funnel_id: uuid.UUID) -> FunnelCompleted:
        """The `funnel-completed` message of this computation (the spec's step names)."""
        return FunnelCompleted(
            funnel_id=funnel_id,
            funnel_name=self.published_name,
            period_from=self.period_start,
            period_to=self.period_end,
            steps=self.published_steps,
            conversion_rate=self.conversion_rate,
            window_seconds=self.window_seconds,
        )


def _condition(step: Step) -> str:
    cond = f"source = '{step.source}' AND event_type = '{step.event_type}'"
    if step.product_page:
        cond += " AND match(path, {product_page:String})"
    return cond


def _types(funnel: Funnel, source: str) -> list[str]:
    return sorted({step.event_type for step in funnel.steps if step.source == source})


def funnel_sql(funnel: Funnel) -> str:
    parts = []
    if _types(funnel, "tracking"):
        parts.append(
            # Visitors are grouped as UUIDs: a string per event costs more than the funnel.
            "SELECT 'tracking' AS source, ifNull(user_id, session_id) AS visitor,"
            " toUInt64(toUnixTimestamp64Milli(occurred_at)) AS ts,"
            " event_type, path FROM tracking_events"
            " WHERE event_type IN {tracking_types:Array(String)} AND NOT is_bot"
            " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
            " AND occurred_at < {end:DateTime64(3, 'UTC')}"
            # Implied by the two above (core/limits.py); lets the scan skip parts.
            " AND received_at >= {received_from:DateTime64(3, 'UTC')}"
            " AND received_at < {received_to:DateTime64(3, 'UTC')}"
        )
    if _types(funnel, "domain"):
        parts.append(
            "SELECT 'domain' AS source, assumeNotNull(customer_id) AS visitor,"
            " toUInt64(toUnixTimestamp64Milli(occurred_at)) AS ts, event_type, '' AS path"
            " FROM analytics_events FINAL"
            " WHERE event_type IN {domain_types:Array(String)} AND customer_id IS NOT NULL"
            " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
            " AND occurred_at < {end:DateTime64(3, 'UTC')}"
        )
    conditions = ", ".join(_condition(step) for step in funnel.steps)
    return (
        "SELECT level, count() AS visitors FROM ("
        f" SELECT visitor, windowFunnel({{window:UInt64}})(ts, {conditions}) AS level"
        f" FROM ({' UNION ALL '.join(parts)}) GROUP BY visitor"
        ") WHERE level > 0 GROUP BY level"
    )


async def compute(
    warehouse: Warehouse,
    funnel: Funnel,
    start: datetime,
    end: datetime,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    product_page: str = PRODUCT_PAGE_PATTERN,
) -> FunnelResult:
    """`product_page`: PRODUCT_PAGE_PATTERN, the paths whose PAGEVIEW starts the booking
    funnel."""
    rows = await warehouse.rows(
        funnel_sql(funnel),
        {
            "start": start,
            "end": end,
            "received_from": start - TRUST_CLIENT_FUTURE,
            "received_to": end + TRUST_CLIENT_PAST,
            "window": window_seconds * 1000,
            "tracking_types": _types(funnel, "tracking"),
            "domain_types": _types(funnel, "domain"),
            "product_page": product_page,
        },
    )
    reached = {int(level): int(n) for level, n in rows}
    steps = [
        (step.name, sum(n for level, n in reached.items() if level >= k))
        for k, step in enumerate(funnel.steps, start=1)
    ]
    return FunnelResult(funnel.name, start, end, window_seconds, steps)
