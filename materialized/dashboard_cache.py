"""The Redis cache of dashboard answers, `dashboard:snapshot:{from}:{to}`, and its invalidation.

Every cached answer is listed in one hash (key -> its range and when it was cached), so new
facts drop exactly the answers they can change, without scanning the keyspace: a stream of
late events for past days leaves the cached dashboards of other ranges alone.

A computation registers in the same hash before it reads ClickHouse (`begin`, with a token of
its own), and its answer is written only while that entry is still there (`remember`): an
invalidation that lands while the answer is being computed drops the entry, so an answer read
from the data before the invalidation is never cached after it.
"""

from __future__ import annotations

import secrets
import time
import zoneinfo
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from core import keys
from materialized import widgets

CACHE_SECONDS = 300

# KEYS: the index, the answer's key. ARGV: the token `begin` wrote, the answer, its lifetime,
# the index entry that replaces the token's. Writes nothing if the entry was dropped or taken
# over by a later computation.
_REMEMBER = """
local entry = redis.call('HGET', KEYS[1], KEYS[2])
if not entry or string.sub(entry, -#ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', KEYS[1], KEYS[2], ARGV[4])
return 1
"""


class Pending(msgspec.Struct, frozen=True):
    """A computation registered in the index: its answer may be cached while `token` is there."""

    key: str
    start: datetime
    end: datetime
    token: str

    def entry(self) -> str:
        """The index value: the range, when it was written, the token last."""
        return f"{self.start.timestamp()} {self.end.timestamp()} {time.time()} {self.token}"


async def begin(redis: Redis, start: datetime, end: datetime) -> Pending:
    """Call before reading the data the answer is computed from."""
    key = keys.dashboard_cache(start.isoformat(), end.isoformat())
    pending = Pending(key, start, end, secrets.token_hex(8))
    await redis.hset(keys.DASHBOARD_CACHE_INDEX, key, pending.entry())  # type: ignore[misc]
    return pending


async def remember(redis: Redis, pending: Pending, body: bytes) -> bool:
    """Caches `body` unless an invalidation came after `begin`; says whether it did."""
    arguments: list[Any] = [pending.token, body, CACHE_SECONDS, pending.entry()]
    written = await redis.eval(  # type: ignore[misc]
        _REMEMBER, 2, keys.DASHBOARD_CACHE_INDEX, pending.key, *arguments
    )
    return bool(written)


class Changed(msgspec.Struct, frozen=True):
    """What new events can change in a cached answer (see widgets.compute)."""

    everything: bool = False  # an event in the current day/week/month: every answer's tiles
    within: frozenset[float] = frozenset()  # event times: answers whose range holds one
    # first orders: a customer's first order decides "new or returning" in every later range
    before_end: float | None = None

    def touches(self, start: float, end: float) -> bool:
        if self.everything:
            return True
        if self.before_end is not None and self.before_end < end:
            return True
        return any(start <= moment < end for moment in self.within)


def changed_by(
    events: Iterable[tuple[str, datetime]], now: datetime, zone: zoneinfo.ZoneInfo
) -> Changed:
    """`events` are (event type, occurred at) of domain events just stored."""
    live_since = min(widgets.local_periods(now, zone).values())
    moments: set[float] = set()
    first_order: float | None = None
    for event_type, occurred_at in events:
        if occurred_at >= live_since:
            return Changed(everything=True)
        moments.add(occurred_at.timestamp())
        if event_type == "order-created":
            t = occurred_at.timestamp()
            first_order = t if first_order is None else min(first_order, t)
    return Changed(within=frozenset(moments), before_end=first_order)


EVERYTHING = Changed(everything=True)


async def invalidate(redis: Redis, changed: Changed = EVERYTHING) -> int:
    """Drop the cached answers that `changed` touches (every answer by default); returns how
    many were dropped. Index entries of answers that have expired are forgotten too."""
    index: dict[bytes, bytes] = await redis.hgetall(keys.DASHBOARD_CACHE_INDEX)  # type: ignore[misc]
    if not index:
        return 0
    expired_before = time.time() - CACHE_SECONDS
    drop: list[bytes] = []
    forget: list[bytes] = []
    for key, value in index.items():
        start, end, cached_at = (float(part) for part in value.split()[:3])
        if changed.touches(start, end):
            drop.append(key)
        elif cached_at < expired_before:
            forget.append(key)
    if not drop and not forget:
        return 0
    pipe: Any = redis.pipeline(transaction=True)
    if drop:
        pipe.delete(*drop)
    pipe.hdel(keys.DASHBOARD_CACHE_INDEX, *drop, *forget)
    await pipe.execute()
    return len(drop)
