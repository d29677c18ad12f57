"""The one batch writer: a reader of the tracking log that places each batch in ClickHouse, or
in the Redis retry queue when ClickHouse refuses it, and then commits past it.

It flushes when the log seals a segment holding a batch's worth of rows, when its timer comes
(`FLUSH_INTERVAL_MS`: the open segment is sealed and taken whole) and at shutdown. Per batch,
in the log's order: the session step (duplicates by eventId, session data: one Redis script),
the insert with the batch's token, or else the hand-off of the same rows and token to the
retry queue; then the log commits it, announcing the placed rows in the same durable write.

When neither ClickHouse nor the retry queue takes a batch, the writer keeps that one batch in
hand and tries again with backoff. Everything after it stays in the log (on disk), where ingest
counts it against `INGEST_MAX_PENDING_ROWS`; nothing accepted is held anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from redis.exceptions import RedisError

from core.clickhouse import Warehouse, WarehouseError
from core.metrics import (
    BATCH_ROWS,
    FLUSH_SECONDS,
    INSERT_FAILURES,
    REDIS_FAILURES,
    RESTARTS,
    WRITER_STALLED,
)
from ingest.log_directory import Batch
from ingest.tracking_log import TrackingLog
from tracked import accounting
from tracked.message import record_stored
from tracked.retry_queue import RetryBatch
from tracked.row import TRACKING_COLUMNS, TrackingRow

log = logging.getLogger(__name__)

TABLE = "tracking_events"
_encode_lines = msgspec.json.Encoder().encode_lines

COMMIT_RETRY_S = 0.5

Prepare = Callable[[list[TrackingRow], int], Awaitable[list[TrackingRow]]]


@dataclass(frozen=True, slots=True)
class Placement:
    rows: list[TrackingRow]  # stored, or queued for retry
    refused: list[TrackingRow]  # refused by ClickHouse for their data, dead-lettered
    queued: bool
    at: datetime


class LogWriter:
    def __init__(
        self,
        tracking_log: TrackingLog,
        warehouse: Warehouse,
        *,
        interval_ms: int,
        prepare: Prepare,
        hand_off: Callable[[RetryBatch], Awaitable[None]],
        dead_letter: Callable[[list[tuple[bytes, str]]], Awaitable[None]],
        max_backoff_s: float = 30.0,
    ) -> None:
        self._log = tracking_log
        self._warehouse = warehouse
        self._interval = interval_ms / 1000
        self._prepare = prepare
        self._hand_off = hand_off
        self._dead_letter = dead_letter
        self._max_backoff = max_backoff_s
        self._lock = asyncio.Lock()  # one batch at a time, in the log's order
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="writer")

    async def close(self) -> None:
        """Place what the log holds, one try per batch; what cannot be placed now stays in the
        log for the next start. The loop is asked to stop, never cancelled: a cancel landing
        inside a placement would leave its batch half done (harmless, but slower to redo)."""
        self._closing = True
        self._log.ready.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self._log.unread_rows:
            log.error(
                "%d accepted events could not be placed at shutdown; the tracking log keeps"
                " them for the next start",
                self._log.unread_rows,
            )

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._log.ready.wait(), timeout=self._interval)
            except TimeoutError:
                self._log.seal()  # the timer: what the open segment holds is a batch now
            self._log.ready.clear()
            try:
                await self._write_ready()
            except Exception:  # a bug or the unforeseen: the batch is read again, later
                RESTARTS.labels("writer").inc()
                log.exception("writer: placing a batch failed; it is read again in 1 s")
                await asyncio.sleep(1.0)
                self._log.ready.set()

    async def flush(self) -> None:
        """Place every event accepted so far (tests, shutdown)."""
        self._log.seal()
        await self._log.durable()
        await self._write_ready()

    async def _write_ready(self) -> None:
        async with self._lock:
            while (batch := self._log.next_batch()) is not None:
                try:
                    placed = await self._place(batch)
                except BaseException:
                    self._log.unread(batch)  # not placed: the next read takes it again
                    raise
                if not placed:
                    self._log.unread(batch)
                    return

    async def _place(self, batch: Batch) -> bool:
        """Store or hand off the batch and its ledger lines, then commit it; False when
        shutdown comes first."""
        rows = await self._prepare(batch.rows, batch.owner)
        backoff = 0.5
        while (placement := await self._store(batch.token, rows)) is None:
            WRITER_STALLED.inc()
            if self._closing:
                return False
            await asyncio.sleep(backoff)
            backoff = min(self._max_backoff, backoff * 2)
        tally = accounting.placed(
            batch.rows, rows, placement.rows, placement.refused, placement.queued, placement.at
        )
        while not await self._account(f"{batch.token}:ledger", tally.lines()):
            WRITER_STALLED.inc()
            if self._closing:
                return False
            await asyncio.sleep(backoff)
            backoff = min(self._max_backoff, backoff * 2)
        while True:
            try:
                await self._log.commit(batch, placement.rows)
                return True
            except OSError as error:  # the disk: the batch stays placed, its commit waits
                if self._closing:
                    return False
                log.warning("tracking log: cannot commit a batch (%s); trying again", error)
                # Within a second of the space coming back: the relay waits for these.
                await asyncio.sleep(COMMIT_RETRY_S)

    async def _account(self, token: str, lines: bytes) -> bool:
        """The batch's ledger lines into ClickHouse, or into the retry queue beside it."""
        if not lines:
            return True
        try:
            await self._warehouse.insert_lines(
                accounting.TABLE, accounting.COLUMNS, lines, dedup_token=token
            )
            return True
        except WarehouseError as error:
            INSERT_FAILURES.labels(accounting.TABLE).inc()
            log.warning("ledger insert failed, queued for retry: %s", error)
        batch = RetryBatch(
            table=accounting.TABLE,
            columns=accounting.COLUMNS,
            token=token,
            data=lines,
            rows=lines.count(b"\n"),
        )
        try:
            await self._hand_off(batch)
            return True
        except (RedisError, OSError) as error:
            REDIS_FAILURES.labels("retry_hand_off").inc()
            log.warning("retry queue unavailable; the batch's ledger waits: %s", error)
            return False

    async def _store(self, token: str, rows: list[TrackingRow]) -> Placement | None:
        """Where the rows went: ClickHouse or the retry queue (under `token`); None when
        neither took them. Rows ClickHouse refuses for their data are isolated and
        dead-lettered."""
        if not rows:
            return Placement(rows, [], False, datetime.now(UTC))
        data = _encode_lines(rows)
        started = time.perf_counter()
        try:
            refused = await self._warehouse.insert_isolating(
                TABLE, TRACKING_COLUMNS, data, dedup_token=token
            )
        except WarehouseError as error:
            INSERT_FAILURES.labels(TABLE).inc()
            log.warning("insert of %d rows into %s failed: %s", len(rows), TABLE, error)
        else:
            at = datetime.now(UTC)
            FLUSH_SECONDS.observe(time.perf_counter() - started)
            BATCH_ROWS.observe(len(rows))
            lost: list[TrackingRow] = []
            if refused:  # refused for their data: never retried, kept apart
                INSERT_FAILURES.labels(TABLE).inc()
                await self._dead_letter([(line, reason) for _, line, reason in refused])
                dropped = {i for i, _, _ in refused}
                lost = [row for i, row in enumerate(rows) if i in dropped]
                rows = [row for i, row in enumerate(rows) if i not in dropped]
            record_stored(rows)
            return Placement(rows, lost, False, at)
        batch = RetryBatch(
            table=TABLE, columns=TRACKING_COLUMNS, token=token, data=data, rows=len(rows)
        )
        try:
            await self._hand_off(batch)
            return Placement(rows, [], True, datetime.now(UTC))
        except (RedisError, OSError) as error:
            REDIS_FAILURES.labels("retry_hand_off").inc()
            log.warning("retry queue unavailable; the log keeps %d rows: %s", len(rows), error)
            return None
