"""Live counters in Redis for the dashboard's real-time tiles, per day in REPORT_TIMEZONE.

ClickHouse (domain_events_hourly) is the record; these are bumped once per newly stored event
so a tile can show the number without a query. Revenue is kept in millionths of the currency
unit as a decimal string, added digit by digit in Lua: an amount the column holds (up to 10^32)
is 10^38 millionths, far past what HINCRBY's 64-bit integers can add.

Counting is best-effort: when Redis refuses, the consumer marks the days it could not count
(`keys.COUNTERS_STALE`) and `reconcile` rewrites them, and today, from ClickHouse (the hourly
rebuild).
"""

from __future__ import annotations

import decimal
import zoneinfo
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse

COUNTER_TTL_S = 40 * 86400
MICROS = decimal.Decimal(1_000_000)
# Python's default 28 digits would round amounts the column holds (38 digits) and their sums.
EXACT = decimal.Context(prec=100)
REVENUE = "revenue:"


class Countable(Protocol):
    event_type: str
    occurred_at: datetime
    amount: decimal.Decimal | None
    currency: str


def tally(rows: Iterable[Countable], zone: zoneinfo.ZoneInfo) -> dict[date, Counter[str]]:
    """Per local day: events by type, and `revenue:CUR` from payments, in millionths."""
    days: dict[date, Counter[str]] = {}
    for row in rows:
        counts = days.setdefault(row.occurred_at.astimezone(zone).date(), Counter())
        counts[row.event_type] += 1
        if row.event_type == "payment-succeeded" and row.amount is not None:
            counts[f"{REVENUE}{row.currency}"] += int(EXACT.multiply(row.amount, MICROS))
    return days


# KEYS: the day hashes. ARGV: ttl, then per key: n, then n pairs (field, increment).
# Revenue fields are added as decimal strings (exact at any size); counts with HINCRBY.
_RECORD = """
local function add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then s = s + string.byte(b, j) - 48; j = j - 1 end
    out[#out + 1] = string.char(48 + s % 10)
    carry = math.floor(s / 10)
  end
  return string.reverse(table.concat(out))
end
local ttl, at = ARGV[1], 2
for _, k in ipairs(KEYS) do
  local n = tonumber(ARGV[at]); at = at + 1
  for _ = 1, n do
    local field, by = ARGV[at], ARGV[at + 1]; at = at + 2
    if string.sub(field, 1, 8) == 'revenue:' then
      redis.call('HSET', k, field, add(redis.call('HGET', k, field) or '0', by))
    else
      redis.call('HINCRBY', k, field, by)
    end
  end
  redis.call('EXPIRE', k, ttl)
end
return #KEYS
"""


async def record(redis: Redis, days: dict[date, Counter[str]]) -> None:
    """Add a tally to the day hashes, all of it in one atomic script call."""
    if not days:
        return
    hashes: list[str] = []
    args: list[Any] = [COUNTER_TTL_S]
    for day, counts in days.items():
        hashes.append(keys.counters(day))
        args.append(len(counts))
        for field, value in counts.items():
            args.extend((field, str(value)))
    await redis.eval(_RECORD, len(hashes), *hashes, *args)  # type: ignore[misc]


async def read(redis: Redis, day: date) -> dict[str, int]:
    raw: dict[bytes, bytes] = await redis.hgetall(keys.counters(day))  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}


async def mark_stale(redis: Redis, days: Iterable[date]) -> None:
    wanted = [day.isoformat() for day in days]
    if wanted:
        await redis.sadd(keys.COUNTERS_STALE, *wanted)  # type: ignore[misc]


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


async def reconcile(
    redis: Redis, warehouse: Warehouse, zone: zoneinfo.ZoneInfo, today: date
) -> list[date]:
    """Rewrite today's counters and every day marked stale from ClickHouse; the days done.

    An increment landing between the query and the rewrite is lost from the tile until the
    next run; the tiles are a convenience, ClickHouse answers every report.
    """
    marked: set[bytes] = await redis.smembers(keys.COUNTERS_STALE)  # type: ignore[misc]
    days = {today} | {date.fromisoformat(m.decode()) for m in marked}
    horizon = today - timedelta(seconds=COUNTER_TTL_S)  # older hashes would have expired
    days = {day for day in days if day > horizon}
    found: dict[date, Counter[str]] = {day: Counter() for day in days}
    rows = await warehouse.rows(
        "SELECT toDate(hour, {zone:String}) AS day, event_type, currency,"
        " sum(events), sum(amount) FROM domain_events_hourly"
        " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
        " GROUP BY day, event_type, currency",
        {
            "zone": zone.key,
            "start": _midnight(min(days), zone),
            "end": _midnight(max(days) + timedelta(days=1), zone),
        },
    )
    for day, event_type, currency, events, amount in rows:
        if day not in found:
            continue
        found[day][event_type] += int(events)
        if event_type == "payment-succeeded" and currency:
            found[day][f"{REVENUE}{currency}"] += int(EXACT.multiply(amount, MICROS))
    pipe: Any = redis.pipeline(transaction=True)
    for day, counts in found.items():
        pipe.delete(keys.counters(day))
        if counts:
            pipe.hset(
                keys.counters(day), mapping={field: str(value) for field, value in counts.items()}
            )
            pipe.expire(keys.counters(day), COUNTER_TTL_S)
    if marked:
        pipe.srem(keys.COUNTERS_STALE, *marked)
    await pipe.execute()
    return sorted(found)
