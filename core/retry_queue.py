"""Failed insert batches, kept in Redis until ClickHouse takes them.

A batch is the encoded rows plus the deduplication token it was first tried with, so however
often it is retried, and whoever retries it, ClickHouse stores it once. A batch being retried
sits in a processing list; if the retrier dies, `recover` puts it back.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

QUEUE_KEY = "lw:retry:batches"
PROCESSING_KEY = "lw:retry:processing"
# The arq job id of a run of `retry_failed_batches` queued by a hand-off: at most one such run
# waits at a time, however many batches are handed off meanwhile.
RETRY_JOB_ID = "retry_failed_batches"


class RetryBatch(msgspec.Struct, kw_only=True):
    table: str
    columns: tuple[str, ...]
    token: str
    data: bytes  # JSONCompactEachRow lines
    rows: int
    attempts: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RetryBatch)


class RetryQueue:
    def __init__(self, redis: Redis) -> None:
        # redis-py types its asyncio methods as `Awaitable[T] | T`; Any keeps the awaits honest.
        self._redis: Any = redis

    async def push(self, batch: RetryBatch) -> None:
        await self._redis.lpush(QUEUE_KEY, _encoder.encode(batch))

    async def claim(self) -> tuple[bytes, RetryBatch] | None:
        """Take the oldest batch; it stays in the processing list until done or given back."""
        raw: bytes | None = await self._redis.lmove(QUEUE_KEY, PROCESSING_KEY, "RIGHT", "LEFT")
        if raw is None:
            return None
        return raw, _decoder.decode(raw)

    async def done(self, raw: bytes) -> None:
        await self._redis.lrem(PROCESSING_KEY, 1, raw)

    async def give_back(self, raw: bytes, batch: RetryBatch) -> None:
        batch.attempts += 1
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrem(PROCESSING_KEY, 1, raw)
            pipe.rpush(QUEUE_KEY, _encoder.encode(batch))  # back at the head: oldest first
            await pipe.execute()

    async def recover(self) -> int:
        """Put back batches a dead retrier left in processing; call before any retrier runs."""
        moved = 0
        while await self._redis.lmove(PROCESSING_KEY, QUEUE_KEY, "LEFT", "RIGHT") is not None:
            moved += 1
        return moved

    async def depth(self) -> int:
        queued, processing = (
            await self._redis.llen(QUEUE_KEY),
            await self._redis.llen(PROCESSING_KEY),
        )
        return int(queued) + int(processing)
