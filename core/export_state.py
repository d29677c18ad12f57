"""The state of report exports, kept in Redis: `lw:export:{id}` hashes, expiring after 8 days
(an export's file lives 7)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

TTL_S = 8 * 86400


def key(export_id: str) -> str:
    return f"lw:export:{export_id}"


async def save(redis: Redis, export_id: str, **fields: str) -> None:
    client: Any = redis
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(key(export_id), mapping=fields)
        pipe.expire(key(export_id), TTL_S)
        await pipe.execute()


async def load(redis: Redis, export_id: str) -> dict[str, str] | None:
    raw: dict[bytes, bytes] = await redis.hgetall(key(export_id))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()} or None
