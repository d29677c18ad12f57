"""`GET /v1/analytics/ingest`: per UTC hour, what became of the accepted tracking events
(`ingest_hourly`, tracked/accounting.py) and the lags from 202 to queryable and to announced.

accepted = stored + filtered (by reason) + lost (by reason) + pending, hour by hour, where
pending is what waits in the retry queue (the ledger's queued) or in the tracking log (the
answering process's log: `analytics api` runs a log per worker process). Lags are read from
histograms whose buckets are about 12% apart: a p50 or p99 is its bucket's upper bound.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import msgspec

from core.clickhouse import Warehouse


class IngestHour(msgspec.Struct, rename="camel", kw_only=True):
    hour: datetime
    accepted: int
    stored: int
    filtered: dict[str, int]
    lost: dict[str, int]
    pending: int


class IngestLag(msgspec.Struct, rename="camel", kw_only=True):
    # None when nothing was stored or announced in the range.
    queryable_p50_ms: int | None
    queryable_p99_ms: int | None
    announced_p50_ms: int | None
    announced_p99_ms: int | None


class IngestLedger(msgspec.Struct, kw_only=True):
    hours: list[IngestHour]  # hours with any event, oldest first
    lag: IngestLag


def quantile(histogram: Counter[int], q: float) -> int | None:
    """The upper bound of the bucket holding the q-th quantile."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for bound in sorted(histogram):
        seen += histogram[bound]
        if seen >= rank:
            return bound
    return max(histogram)


async def ledger(
    warehouse: Warehouse,
    start: datetime,
    end: datetime,
    in_log: Counter[datetime],
    announced: Counter[int],
) -> IngestLedger:
    rows = await warehouse.rows(
        "SELECT hour, outcome, reason, sum(events) FROM ingest_hourly"
        " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
        " GROUP BY hour, outcome, reason HAVING sum(events) != 0 ORDER BY hour",
        {"start": start, "end": end},
    )
    hours: dict[datetime, IngestHour] = {}
    queryable: Counter[int] = Counter()

    def at(hour: datetime) -> IngestHour:
        return hours.setdefault(
            hour, IngestHour(hour=hour, accepted=0, stored=0, filtered={}, lost={}, pending=0)
        )

    for hour, outcome, reason, n in rows:
        hour = hour.replace(tzinfo=start.tzinfo) if hour.tzinfo is None else hour
        n = int(n)
        if outcome == "queryable_ms":
            queryable[int(reason)] += n
            continue
        row = at(hour)
        if outcome == "accepted":
            row.accepted += n
        elif outcome == "stored":
            row.stored += n
        elif outcome == "filtered":
            row.filtered[reason] = row.filtered.get(reason, 0) + n
        elif outcome == "lost":
            row.lost[reason] = row.lost.get(reason, 0) + n
        elif outcome == "queued":
            row.pending += n
    for hour, n in in_log.items():
        if start <= hour < end:
            row = at(hour)
            row.accepted += n
            row.pending += n
    return IngestLedger(
        hours=[hours[h] for h in sorted(hours)],
        lag=IngestLag(
            queryable_p50_ms=quantile(queryable, 0.5),
            queryable_p99_ms=quantile(queryable, 0.99),
            announced_p50_ms=quantile(announced, 0.5),
            announced_p99_ms=quantile(announced, 0.99),
        ),
    )
