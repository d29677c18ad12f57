"""The one batch writer: rows go to ClickHouse in batches, on size, on a timer and at shutdown.

A batch gets its deduplication token when it is cut from the buffer and keeps it through every
retry, so ClickHouse stores a retried batch once even if an earlier attempt did land.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from materialized.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    rows: list[tuple[Any, ...]]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0


class BatchWriter:
    def __init__(
        self,
        warehouse: Warehouse,
        table: str,
        columns: Sequence[str],
        *,
        max_rows: int,
        interval_ms: int,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._warehouse = warehouse
        self._table = table
        self._columns = tuple(columns)
        self._max_rows = max_rows
        self._interval = interval_ms / 1000
        self._max_backoff = max_backoff_s
        self._buffer: list[tuple[Any, ...]] = []
        self._failed: deque[Batch] = deque()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self.stored_rows = 0

    @property
    def pending_rows(self) -> int:
        return len(self._buffer) + sum(len(b.rows) for b in self._failed)

    def add(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._buffer.extend(rows)
        if len(self._buffer) >= self._max_rows:
            self._full.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"writer:{self._table}")

    async def close(self) -> None:
        """Stop the timer and write out everything still held."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush(force_retries=True)
        if self.pending_rows:
            log.error(
                "%d rows of %s could not be stored at shutdown", self.pending_rows, self._table
            )

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._full.wait(), timeout=self._interval)
            except TimeoutError:
                await self.flush()
            else:
                # Size-triggered: write whole batches; the remainder waits for the timer.
                await self.flush(full_batches_only=True)

    async def flush(self, *, force_retries: bool = False, full_batches_only: bool = False) -> None:
        async with self._lock:
            self._full.clear()
            if self._failed and (force_retries or time.monotonic() >= self._retry_at):
                await self._retry_failed()
            while self._buffer and (not full_batches_only or len(self._buffer) >= self._max_rows):
                rows, self._buffer = self._buffer[: self._max_rows], self._buffer[self._max_rows :]
                if not await self._insert(Batch(rows)):
                    break

    async def _retry_failed(self) -> None:
        while self._failed:
            batch = self._failed.popleft()
            if not await self._insert(batch):
                return

    async def _insert(self, batch: Batch) -> bool:
        batch.attempts += 1
        try:
            await self._warehouse.insert(
                self._table, batch.rows, self._columns, dedup_token=batch.token
            )
        except Exception as error:
            backoff = min(self._max_backoff, 0.5 * 2 ** min(batch.attempts, 10))
            self._retry_at = time.monotonic() + backoff
            self._failed.append(batch)
            log.warning(
                "insert of %d rows into %s failed (attempt %d, retry in %.1fs): %s",
                len(batch.rows),
                self._table,
                batch.attempts,
                backoff,
                error,
            )
            return False
        self.stored_rows += len(batch.rows)
        return True
