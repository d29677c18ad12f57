"""The beacon pipeline's parts, opened on a process's runtime and closed before it.

The request path (`ingest/track.py`) reads them from `app.ctx.pipeline`; they are: the rate
limits (requests and events per client), the GeoIP reader, the batch writer (with the Redis
session steps and the hand-off to the retry queue), and the tracking log that makes a 202
durable and that the `event.tracked` relay publishes from (in another process: the ingest
loop never publishes).
"""

from __future__ import annotations

from dataclasses import dataclass

from sanic import Request

from core.best_effort import best_effort
from core.jobs import RETRY_JOB_ID, Job
from core.retry_queue import RetryBatch
from core.rows import TrackingRow
from core.runtime import Runtime
from core.settings import Settings
from core.tracked import announce_stored, record_stored
from ingest.client_ip import Network
from ingest.geo import GeoLocator
from ingest.ratelimit import RateLimiter
from ingest.sessions import SessionStore
from ingest.tracking_log import TrackingLog, open_log
from ingest.writer import BatchWriter, Settles


@dataclass(slots=True)
class Pipeline:
    settings: Settings
    limiter: RateLimiter  # requests and events per client
    geo: GeoLocator | None
    trusted_proxies: tuple[Network, ...]
    writer: BatchWriter[TrackingRow]
    log: TrackingLog | None  # None when SPOOL_DIR is empty: a 202 means accepted in memory

    @classmethod
    async def open(cls, runtime: Runtime, *, counts_relayed: bool = True) -> Pipeline:
        """`counts_relayed`: the relay is this process's child (or task), so its progress is
        counted on this process's /metrics."""
        settings, redis = runtime.settings, runtime.redis
        sessions = SessionStore(redis)
        tracking_log: TrackingLog | None = None

        def stored(rows: list[TrackingRow]) -> Settles | None:
            if tracking_log is None:  # no log: published from this process
                return announce_stored(runtime.publisher, rows)
            record_stored(rows)
            return tracking_log.announce(rows)

        async def hand_off(batch: RetryBatch) -> None:
            await runtime.retry_queue.push(batch)
            async with best_effort("retry_enqueue"):  # the cron picks it up within 10 s
                await redis.enqueue_job(Job.RETRY_FAILED_BATCHES, _job_id=RETRY_JOB_ID, _defer_by=1)

        writer: BatchWriter[TrackingRow] = BatchWriter(
            runtime.warehouse,
            "tracking_events",
            TrackingRow,
            max_rows=settings.flush_max_rows,
            interval_ms=settings.flush_interval_ms,
            prepare=sessions.enrich,
            on_stored=stored,
            hand_off=hand_off,
        )
        if settings.spool_dir:
            opened = open_log(
                settings.spool_dir,
                writer,
                max_backlog_bytes=settings.tracked_backlog_max_bytes,
                count_published=counts_relayed,
            )
            tracking_log = opened.log
            # Events a killed process had accepted go to the writer before anything new.
            await tracking_log.replay(runtime.warehouse, opened.leftovers, sessions.replaying)
            await tracking_log.start()
        writer.start()
        return cls(
            settings=settings,
            limiter=RateLimiter(
                redis, settings.rate_limit_per_window, settings.event_budget_per_window
            ),
            geo=GeoLocator(settings.geoip_db) if settings.geoip_db else None,
            trusted_proxies=settings.trusted_networks,
            writer=writer,
            log=tracking_log,
        )

    async def close(self) -> None:
        """Write out what the writer holds and seal the log (what is left in it is replayed
        or relayed after a restart)."""
        await self.writer.close()
        if self.log is not None:
            await self.log.close()

    async def relayed(self, within: float) -> bool:
        """Wait up to `within` seconds for the relay to read the log; True if it did."""
        return True if self.log is None else await self.log.relayed(within)

    def release(self) -> None:
        if self.log is not None:
            self.log.release()
        if self.geo is not None:
            self.geo.close()


def pipeline(request: Request) -> Pipeline:
    found: Pipeline = request.app.ctx.pipeline
    return found
