"""Batches ClickHouse refused, kept in Redis until it takes them (the platform's design: "if
the DB write fails, the event is queued in Redis for retry").

A batch is the encoded rows plus the insert token of its place in the tracking log, so however
often it is retried, and whoever retries it, ClickHouse stores it once. The queue is read from
its oldest end without taking anything off it: a batch leaves only once it is stored, so a
retrier that dies mid-way leaves nothing to recover.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from core import keys


class RetryBatch(msgspec.Struct, kw_only=True):
    table: str
    columns: tuple[str, ...]
    token: str
    data: bytes  # JSONCompactEachRow lines
    rows: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RetryBatch)


class RetryQueue:
    def __init__(self, redis: Redis) -> None:
        # redis-py types its asyncio methods as `Awaitable[T] | T`; Any keeps the awaits honest.
        self._redis: Any = redis

    async def push(self, batch: RetryBatch) -> None:
        await self._redis.lpush(keys.RETRY_QUEUE, _encoder.encode(batch))

    async def oldest(self, up_to: int) -> list[tuple[bytes, RetryBatch]]:
        """Up to `up_to` of the oldest batches, oldest first; they stay queued until `done`."""
        raws: list[bytes] = await self._redis.lrange(keys.RETRY_QUEUE, -up_to, -1)
        return [(raw, _decoder.decode(raw)) for raw in reversed(raws)]

    async def done(self, raw: bytes) -> None:
        """Take a stored batch off the queue (one copy of it, from the oldest end)."""
        await self._redis.lrem(keys.RETRY_QUEUE, -1, raw)

    async def depth(self) -> int:
        return int(await self._redis.llen(keys.RETRY_QUEUE))
