"""Live counters in Redis for the dashboard's real-time tiles, per day in REPORT_TIMEZONE.

ClickHouse (domain_events_hourly) is the record; these are bumped once per newly stored event
so a tile can show the number without a query. Revenue is kept in millionths of the currency
unit, an integer, so sums stay exact.
"""

from __future__ import annotations

import decimal
import zoneinfo
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, Protocol

from redis.asyncio import Redis

COUNTER_TTL_S = 40 * 86400
MICROS = decimal.Decimal(1_000_000)


class Countable(Protocol):
    event_type: str
    occurred_at: datetime
    amount: decimal.Decimal | None
    currency: str


def key(day: date) -> str:
    return f"lw:counters:{day.isoformat()}"


def tally(rows: Iterable[Countable], zone: zoneinfo.ZoneInfo) -> dict[str, Counter[str]]:
    """Per local day: events by type, and `revenue:CUR` from payments, in millionths."""
    days: dict[str, Counter[str]] = {}
    for row in rows:
        counts = days.setdefault(key(row.occurred_at.astimezone(zone).date()), Counter())
        counts[row.event_type] += 1
        if row.event_type == "payment-succeeded" and row.amount is not None:
            counts[f"revenue:{row.currency}"] += int(row.amount * MICROS)
    return days


async def record(redis: Redis, rows: Iterable[Countable], zone: zoneinfo.ZoneInfo) -> None:
    days = tally(rows, zone)
    if not days:
        return
    pipe: Any = redis.pipeline(transaction=False)
    for day_key, counts in days.items():
        for field, value in counts.items():
            pipe.hincrby(day_key, field, value)
        pipe.expire(day_key, COUNTER_TTL_S)
    await pipe.execute()


async def read(redis: Redis, day: date) -> dict[str, int]:
    raw: dict[bytes, bytes] = await redis.hgetall(key(day))  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}
