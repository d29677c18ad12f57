"""Failed insert batches, kept in Redis until ClickHouse takes them.

A batch is the encoded rows plus the deduplication token it was first tried with, so however
often it is retried, and whoever retries it, ClickHouse stores it once. A batch being retried
sits in a processing list; if the retrier dies, `recover` puts it back.
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
    attempts: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RetryBatch)


class RetryQueue:
    def __init__(self, redis: Redis) -> None:
        # redis-py types its asyncio methods as `Awaitable[T] | T`; Any keeps the awaits honest.
        self._redis: Any = redis

    async def push(self, batch: RetryBatch) -> None:
        await self._redis.lpush(keys.RETRY_QUEUE, _encoder.encode(batch))

    async def claim(self, up_to: int) -> list[tuple[bytes, RetryBatch]]:
        """Take up to `up_to` of the oldest batches, oldest first; they stay in the processing
        list until done or given back."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for _ in range(up_to):
                pipe.lmove(keys.RETRY_QUEUE, keys.RETRY_PROCESSING, "RIGHT", "LEFT")
            taken: list[bytes | None] = await pipe.execute()
        return [(raw, _decoder.decode(raw)) for raw in taken if raw is not None]

    async def done(self, raws: list[bytes]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for raw in raws:
                pipe.lrem(keys.RETRY_PROCESSING, 1, raw)
            await pipe.execute()

    async def give_back(self, claimed: list[tuple[bytes, RetryBatch]]) -> None:
        """Return claimed batches to the head of the queue, in their order, one attempt more."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for raw, batch in reversed(claimed):  # the oldest ends up at the very head
                batch.attempts += 1
                pipe.lrem(keys.RETRY_PROCESSING, 1, raw)
                pipe.rpush(keys.RETRY_QUEUE, _encoder.encode(batch))
            await pipe.execute()

    async def recover(self) -> int:
        """Put back batches a dead retrier left in processing; call before any retrier runs."""
        moved = 0
        while (
            await self._redis.lmove(keys.RETRY_PROCESSING, keys.RETRY_QUEUE, "LEFT", "RIGHT")
            is not None
        ):
            moved += 1
        return moved

    async def depth(self) -> int:
        queued, processing = (
            await self._redis.llen(keys.RETRY_QUEUE),
            await self._redis.llen(keys.RETRY_PROCESSING),
        )
        return int(queued) + int(processing)
