"""The Redis cache of dashboard answers, `dashboard:snapshot:{from}:{to}`, and its invalidation.

Every cached key is also listed in one set, so new facts can drop all cached answers at once
without scanning the keyspace.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

INDEX_KEY = "dashboard:snapshot:keys"


def cache_key(start: str, end: str) -> str:
    return f"dashboard:snapshot:{start}:{end}"


async def invalidate(redis: Redis) -> int:
    """Drop every cached dashboard answer; returns how many there were."""
    keys: set[bytes] = await redis.smembers(INDEX_KEY)  # type: ignore[misc]
    if not keys:
        return 0
    pipe: Any = redis.pipeline(transaction=True)
    pipe.delete(*keys)
    pipe.srem(INDEX_KEY, *keys)
    await pipe.execute()
    return len(keys)
