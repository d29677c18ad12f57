"""The Redis cache of dashboard answers, `dashboard:snapshot:{from}:{to}`, and its invalidation.

Every cached answer is listed in one hash (key -> its range and when it was cached), so new
facts drop exactly the answers they can change, without scanning the keyspace: a stream of
late events for past days leaves the cached dashboards of other ranges alone.
"""

from __future__ import annotations

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


async def remember(redis: Redis, start: datetime, end: datetime, body: bytes) -> None:
    key = keys.dashboard_cache(start.isoformat(), end.isoformat())
    pipe: Any = redis.pipeline(transaction=True)
    pipe.set(key, body, ex=CACHE_SECONDS)
    pipe.hset(
        keys.DASHBOARD_CACHE_INDEX, key, f"{start.timestamp()} {end.timestamp()} {time.time()}"
    )
    await pipe.execute()


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
        start, end, cached_at = (float(part) for part in value.split())
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
