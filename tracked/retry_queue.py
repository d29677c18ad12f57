"""Batches ClickHouse refused, kept in Redis until it takes them (the platform's design: "if
the DB write fails, the event is queued in Redis for retry").

A batch is the encoded rows plus the insert token of its place in the tracking log, so however
often it is retried, and whoever retries it, ClickHouse stores it once. The queue is read from
its oldest end without taking anything off it: a batch leaves only once it is stored, so a
retrier that dies mid-way leaves nothing to recover.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from redis.asyncio import Redis

from core import keys
from core.best_effort import best_effort
from core.metrics import lose


class RetryBatch(msgspec.Struct, kw_only=True):
    table: str
    columns: tuple[str, ...]
    token: str
    data: bytes  # JSONCompactEachRow lines
    rows: int


class Refused(msgspec.Struct, array_like=True):
    table: str
    reason: str
    line: str  # the JSONCompactEachRow line as ClickHouse was given it


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RetryBatch)
_refused = msgspec.json.Encoder()
REFUSED_KEPT = 10_000
log = logging.getLogger(__name__)


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

    async def dead_letter(self, table: str, refused: list[tuple[bytes, str]]) -> None:
        """Keep rows ClickHouse refuses for their data (never retried: they cannot succeed)
        for an operator to read, the newest REFUSED_KEPT of them; they are counted lost."""
        lose("refused", len(refused))
        for line, reason in refused:
            log.error("ClickHouse refused a row of %s for good: %s: %.300r", table, reason, line)
        async with best_effort("dead_letter"):
            entries = [
                _refused.encode(Refused(table, reason, line.decode(errors="replace")))
                for line, reason in refused
            ]
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(keys.REFUSED_ROWS, *entries)
                pipe.ltrim(keys.REFUSED_ROWS, 0, REFUSED_KEPT - 1)
                await pipe.execute()

    async def depth(self) -> int:
        return int(await self._redis.llen(keys.RETRY_QUEUE))

    async def holds_any(self, ids: list[str]) -> bool:
        """Whether a queued batch holds any of these ids (as text, as the rows carry them)."""
        raws: list[bytes] = await self._redis.lrange(keys.RETRY_QUEUE, 0, -1)
        needles = [i.encode() for i in ids]
        return any(n in _decoder.decode(raw).data for raw in raws for n in needles)

    async def forget_refused(self, ids: list[str]) -> int:
        """Remove the dead-lettered rows holding any of these ids; how many went."""
        entries: list[bytes] = await self._redis.lrange(keys.REFUSED_ROWS, 0, -1)
        needles = [i.encode() for i in ids]
        removed = 0
        for entry in {e for e in entries if any(n in e for n in needles)}:
            removed += int(await self._redis.lrem(keys.REFUSED_ROWS, 0, entry))
        return removed
