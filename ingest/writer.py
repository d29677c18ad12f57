"""The one batch writer: rows go to ClickHouse in batches, on size, on a timer and at shutdown.

When a batch is cut from the buffer it is prepared once (the Redis enrichment steps), encoded
once, and given a deduplication token that it keeps through every retry, so ClickHouse stores it
once even if an earlier attempt did land. A batch ClickHouse refuses is handed to the retry
queue (Redis, retried by an arq job); if that fails too it stays here and is retried with
backoff. Nothing accepted is dropped.

`on_stored` may return something with a `settled` property (the publisher's receipt for the
batch's `event.tracked` messages): until it settles, the batch's rows count as not done, so
the spool keeps them and a restart announces them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import msgspec
from redis.exceptions import RedisError

from core.clickhouse import Warehouse, WarehouseError
from core.metrics import (
    BATCH_ROWS,
    FLUSH_SECONDS,
    HELD_BATCHES,
    INSERT_FAILURES,
    REDIS_FAILURES,
)
from core.retry_queue import RetryBatch

log = logging.getLogger(__name__)

Row = TypeVar("Row", bound=msgspec.Struct)


class Settles(Protocol):
    @property
    def settled(self) -> bool: ...


_encoder = msgspec.json.Encoder()


class BatchWriter(Generic[Row]):
    def __init__(
        self,
        warehouse: Warehouse,
        table: str,
        row_type: type[Row],
        *,
        max_rows: int,
        interval_ms: int,
        prepare: Callable[[list[Row]], Awaitable[list[Row]]] | None = None,
        on_stored: Callable[[list[Row]], Settles | None] | None = None,
        hand_off: Callable[[RetryBatch], Awaitable[None]] | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._warehouse = warehouse
        self._table = table
        self._columns: tuple[str, ...] = row_type.__struct_fields__
        self._max_rows = max_rows
        self._interval = interval_ms / 1000
        self._prepare = prepare
        self._on_stored = on_stored
        self._hand_off = hand_off
        self._max_backoff = max_backoff_s
        self._buffer: list[Row] = []
        self._held: deque[tuple[RetryBatch, list[Row], int]] = deque()  # + first row's seq
        self._unsettled: deque[tuple[int, Settles]] = deque()  # first row's seq, receipt
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._retry_at = 0.0
        # Every row added gets a sequence number; `done_through` is the lowest one not yet
        # stored or handed off (the spool deletes what lies below it).
        self._added = 0
        self._buffer_start = 0
        self._in_flight: int | None = None

    @property
    def pending_rows(self) -> int:
        return len(self._buffer) + sum(batch.rows for batch, _, _ in self._held)

    @property
    def done_through(self) -> int:
        while self._unsettled and self._unsettled[0][1].settled:
            self._unsettled.popleft()
        firsts = [self._buffer_start] + [first for _, _, first in self._held]
        firsts.extend(first for first, receipt in self._unsettled if not receipt.settled)
        if self._in_flight is not None:
            firsts.append(self._in_flight)
        return min(firsts)

    def add(self, rows: list[Row]) -> int:
        """Buffer rows; returns the sequence number just past the last of them."""
        self._buffer.extend(rows)
        self._added += len(rows)
        if len(self._buffer) >= self._max_rows:
            self._full.set()
        return self._added

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer:{self._table}")

    async def close(self) -> None:
        """Stop the timer and write out everything still held.

        The loop is asked to stop, never cancelled: a cancel landing inside a flush would lose
        the batch it had just cut from the buffer."""
        if self._task is not None:
            self._closing = True
            self._full.set()
            await self._task
            self._task = None
        await self.flush(force_retries=True)
        while self._buffer:  # rows added while that flush was writing
            await self.flush(force_retries=True)
        if self.pending_rows:
            log.error(
                "%d rows of %s could not be stored or handed off at shutdown",
                self.pending_rows,
                self._table,
            )

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._full.wait(), timeout=self._interval)
            except TimeoutError:
                await self.flush()
            else:
                # Size-triggered: write whole batches; the remainder waits for the timer.
                await self.flush(full_batches_only=not self._closing)

    async def flush(self, *, force_retries: bool = False, full_batches_only: bool = False) -> None:
        """Write whole batches (`full_batches_only`), or the rows buffered when the flush began.

        Rows that arrive while a batch is being written wait for the next tick or for a full
        batch: draining them too would chain back-to-back inserts of whatever came in during
        the last one, and an insert's fixed cost (planning every view, a part per table) is
        paid per insert, not per row."""
        async with self._lock:
            self._full.clear()
            if self._held and (force_retries or time.monotonic() >= self._retry_at):
                await self._retry_held()
            due = len(self._buffer)
            if full_batches_only:
                due -= due % self._max_rows
            while due:
                take = min(self._max_rows, due)
                due -= take
                rows = self._buffer[:take]
                del self._buffer[:take]
                first, self._in_flight = self._buffer_start, self._buffer_start
                self._buffer_start += len(rows)
                try:
                    if self._prepare is not None:
                        rows = await self._prepare(rows)
                    if rows:
                        await self._write(self._batch(rows), rows, first)
                finally:
                    self._in_flight = None
            HELD_BATCHES.set(len(self._held))

    def _batch(self, rows: list[Row]) -> RetryBatch:
        return RetryBatch(
            table=self._table,
            columns=self._columns,
            token=uuid.uuid4().hex,
            data=_encoder.encode_lines(rows),
            rows=len(rows),
        )

    async def _retry_held(self) -> None:
        """Oldest first; the first refusal ends the round (the rest would be refused too)."""
        for _ in range(len(self._held)):
            batch, rows, first = self._held.popleft()
            self._in_flight = first
            try:
                stored = await self._write(batch, rows, first)
            finally:
                self._in_flight = None
            if not stored:
                return

    async def _write(self, batch: RetryBatch, rows: list[Row], first: int) -> bool:
        """True when ClickHouse took the batch; otherwise it is handed off or held."""
        started = time.perf_counter()
        try:
            await self._warehouse.insert_lines(
                self._table, self._columns, batch.data, dedup_token=batch.token
            )
        except WarehouseError as error:
            INSERT_FAILURES.labels(self._table).inc()
            log.warning("insert of %d rows into %s failed: %s", batch.rows, self._table, error)
            await self._keep(batch, rows, first)
            return False
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        BATCH_ROWS.observe(batch.rows)
        if self._on_stored is not None:
            receipt = self._on_stored(rows)
            if receipt is not None and not receipt.settled:
                self._unsettled.append((first, receipt))
        return True

    async def _keep(self, batch: RetryBatch, rows: list[Row], first: int) -> None:
        if self._hand_off is not None:
            try:
                await self._hand_off(batch)
                return
            except (RedisError, OSError) as error:
                REDIS_FAILURES.labels("retry_hand_off").inc()
                log.warning("retry queue unavailable, holding %d rows here: %s", batch.rows, error)
        batch.attempts += 1
        self._retry_at = time.monotonic() + min(
            self._max_backoff, 0.5 * 2 ** min(batch.attempts, 10)
        )
        if batch.attempts > 1:
            self._held.appendleft((batch, rows, first))  # keep the oldest first
        else:
            self._held.append((batch, rows, first))
