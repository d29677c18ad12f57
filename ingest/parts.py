"""What the beacon path runs on, opened on a process's runtime and closed before it.

The request path (`ingest/track.py`, the steps) reads these parts from `app.ctx.ingest`: the
rate limits (requests and events per client), the GeoIP reader, and the tracking log a 202 is
written to.
The writer reads the log into ClickHouse (or the retry queue); the `event.tracked` relay
reads it into RabbitMQ, in another process: the ingest loop never publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sanic import Request

from core.best_effort import best_effort
from core.jobs import RETRY_JOB_ID, Job
from core.runtime import Runtime
from core.settings import Settings
from ingest.client_ip import Network
from ingest.geo import GeoLocator
from ingest.ratelimit import RateLimiter
from ingest.sessions import SessionStore
from ingest.tracking_log import TrackingLog, open_log
from ingest.writer import LogWriter
from tracked.retry_queue import RetryBatch, RetryQueue


@dataclass(slots=True)
class IngestParts:
    settings: Settings
    limiter: RateLimiter  # requests and events per client
    geo: GeoLocator | None
    trusted_proxies: tuple[Network, ...]
    log: TrackingLog
    writer: LogWriter
    retry_queue: RetryQueue  # batches ClickHouse refused, in the durable Redis

    @classmethod
    async def open(cls, runtime: Runtime, *, counts_relayed: bool = True) -> IngestParts:
        """`counts_relayed`: the relay is this process's child, so its progress is counted on
        this process's /metrics."""
        settings, redis = runtime.settings, runtime.redis
        retry_queue = RetryQueue(redis)

        async def hand_off(batch: RetryBatch) -> None:
            await retry_queue.push(batch)
            async with best_effort("retry_enqueue"):  # the cron picks it up within 10 s
                await redis.enqueue_job(Job.RETRY_FAILED_BATCHES, _job_id=RETRY_JOB_ID, _defer_by=1)

        # Events a stopped process had accepted are read first, by the same writer.
        tracking_log = open_log(
            settings.tracking_log_dir,
            rows_per_segment=settings.flush_max_rows,
            max_backlog_bytes=settings.tracked_backlog_max_bytes,
            count_published=counts_relayed,
        )
        await tracking_log.start()
        writer = LogWriter(
            tracking_log,
            runtime.warehouse,
            interval_ms=settings.flush_interval_ms,
            prepare=SessionStore(runtime.cache).enrich,
            hand_off=hand_off,
            dead_letter=partial(retry_queue.dead_letter, "tracking_events"),
        )
        writer.start()
        return cls(
            settings=settings,
            limiter=RateLimiter(
                runtime.cache, settings.rate_limit_per_window, settings.event_budget_per_window
            ),
            geo=GeoLocator(settings.geoip_db) if settings.geoip_db else None,
            trusted_proxies=settings.trusted_networks,
            log=tracking_log,
            writer=writer,
            retry_queue=retry_queue,
        )

    async def close(self) -> None:
        """Place what the log holds and seal it (what is left is read after a restart)."""
        await self.writer.close()
        await self.log.close()

    async def relayed(self, within: float) -> bool:
        """Wait up to `within` seconds for the relay to read the log; True if it did."""
        return await self.log.relayed(within)

    def release(self) -> None:
        self.log.release()
        if self.geo is not None:
            self.geo.close()


def ingest_parts(request: Request) -> IngestParts:
    found: IngestParts = request.app.ctx.ingest
    return found
