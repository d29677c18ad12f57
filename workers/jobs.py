"""arq jobs, named by what they do. Each takes arq's ctx, whose clients `open_clients` made."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from core.retry_queue import RetryQueue
from ingest.rows import TrackingRow
from ingest.tracked import announce_stored
from materialized.warehouse import Warehouse

log = logging.getLogger(__name__)

_tracking_rows = msgspec.json.Decoder(TrackingRow)


def backoff_seconds(attempts: int) -> float:
    return float(min(60, 2 ** min(attempts, 6)))


async def retry_failed_batches(ctx: dict[str, Any]) -> str:
    """Insert every batch waiting in the retry queue, oldest first, each with its own token.

    On the first refusal the batch goes back and this job is scheduled again with backoff;
    the per-minute cron run is the safety net if that scheduling fails too.
    """
    queue: RetryQueue = ctx["retry_queue"]
    warehouse: Warehouse = ctx["warehouse"]
    stored = 0
    while (claimed := await queue.claim()) is not None:
        raw, batch = claimed
        try:
            await warehouse.insert_lines(
                batch.table, batch.columns, batch.data, dedup_token=batch.token
            )
        except Exception as error:
            await queue.give_back(raw, batch)
            delay = backoff_seconds(batch.attempts)
            await ctx["redis"].enqueue_job("retry_failed_batches", _defer_by=delay)
            log.warning(
                "retry of %d rows into %s failed (attempt %d), next in %.0fs: %s",
                batch.rows,
                batch.table,
                batch.attempts,
                delay,
                error,
            )
            return f"stored {stored} rows; ClickHouse still refusing, next try in {delay:.0f}s"
        await queue.done(raw)
        stored += batch.rows
        if batch.table == "tracking_events":
            announce_stored(ctx.get("publisher"), _tracking_rows.decode_lines(batch.data))
    return f"stored {stored} rows"
