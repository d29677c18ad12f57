"""The beacon pipeline's parts, opened on a process's runtime and closed before it.

The request path (`ingest/track.py`) reads them from `app.ctx.pipeline`; they are: the two rate
limits, the GeoIP reader, the batch writer (with the Redis session steps and the hand-off to
the retry queue) and the spool that makes a 202 durable.
"""

from __future__ import annotations

from dataclasses import dataclass

from sanic import Request

from core import keys
from core.best_effort import best_effort
from core.jobs import RETRY_JOB_ID, Job
from core.retry_queue import RetryBatch
from core.rows import TrackingRow
from core.runtime import Runtime
from core.settings import Settings
from core.tracked import announce_stored
from ingest.client_ip import Network
from ingest.geo import GeoLocator
from ingest.ratelimit import RateLimiter
from ingest.sessions import SessionStore
from ingest.spool import Spool, open_spool, replay
from ingest.writer import BatchWriter


@dataclass(slots=True)
class Pipeline:
    settings: Settings
    limiter: RateLimiter  # requests per client
    event_budget: RateLimiter  # events per client
    geo: GeoLocator | None
    trusted_proxies: tuple[Network, ...]
    writer: BatchWriter[TrackingRow]
    spool: Spool | None

    @classmethod
    async def open(cls, runtime: Runtime) -> Pipeline:
        settings, redis = runtime.settings, runtime.redis
        sessions = SessionStore(redis)

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
            on_stored=lambda rows: announce_stored(runtime.publisher, rows),
            hand_off=hand_off,
        )
        spool = None
        if settings.spool_dir:
            # Events a killed process had accepted are stored before anything new is taken.
            spool, leftovers = open_spool(settings.spool_dir, writer)
            spool.adopt(await replay(runtime.warehouse, leftovers, runtime.publisher))
            spool.start()
        writer.start()
        return cls(
            settings=settings,
            limiter=RateLimiter(redis, *settings.rate_limit_per_window),
            event_budget=RateLimiter(
                redis, *settings.event_budget_per_window, prefix=keys.RATE_EVENTS
            ),
            geo=GeoLocator(settings.geoip_db) if settings.geoip_db else None,
            trusted_proxies=settings.trusted_networks,
            writer=writer,
            spool=spool,
        )

    async def close(self) -> None:
        """Write out what the writer holds; seal the spool. Its segments stay until `release`,
        after the publisher has had its chance to confirm their messages."""
        await self.writer.close()
        if self.spool is not None:
            await self.spool.close()

    def release(self) -> None:
        if self.spool is not None:
            # What the publisher could not get confirmed stays, to be announced after restart.
            self.spool.trim()
            self.spool.release()
        if self.geo is not None:
            self.geo.close()


def pipeline(request: Request) -> Pipeline:
    found: Pipeline = request.app.ctx.pipeline
    return found
