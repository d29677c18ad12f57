"""The beacon pipeline's parts, opened on a process's runtime and closed before it.

The request path (`ingest/track.py`) reads them from `app.ctx.pipeline`; they are: the rate
limits (requests and events per client), the GeoIP reader, the batch writer (with the Redis
session steps and the hand-off to the retry queue), the spool that makes a 202 durable, and
the outbox the `event.tracked` relay publishes from (in another process: the ingest loop never
publishes).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sanic import Request

from core.best_effort import best_effort
from core.jobs import RETRY_JOB_ID, Job
from core.metrics import PUBLISH_LOST, lose
from core.retry_queue import RetryBatch
from core.rows import TrackingRow
from core.runtime import Runtime
from core.settings import Settings
from core.tracked import ROUTING_KEY, announce_stored, record_stored
from ingest.client_ip import Network
from ingest.geo import GeoLocator
from ingest.outbox import Outbox
from ingest.ratelimit import RateLimiter
from ingest.sessions import SessionStore
from ingest.spool import Spool, open_spool
from ingest.writer import BatchWriter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pipeline:
    settings: Settings
    limiter: RateLimiter  # requests and events per client
    geo: GeoLocator | None
    trusted_proxies: tuple[Network, ...]
    writer: BatchWriter[TrackingRow]
    spool: Spool | None
    outbox: Outbox | None
    _maintenance: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, runtime: Runtime, *, counts_relayed: bool = True) -> Pipeline:
        """`counts_relayed`: the relay is this process's child (or task), so its progress is
        counted on this process's /metrics."""
        settings, redis = runtime.settings, runtime.redis
        sessions = SessionStore(redis)
        outbox: Outbox | None = None

        def stored(rows: list[TrackingRow]) -> None:
            if outbox is None:  # no spool, no outbox: published from this process
                announce_stored(runtime.publisher, rows)
                return
            record_stored(rows)
            try:
                outbox.append(rows)
            except OSError as error:  # the events are stored; their messages are lost
                PUBLISH_LOST.labels(ROUTING_KEY).inc(len(rows))
                lose("publish_lost", len(rows))
                log.error("event.tracked outbox unwritable, %d messages lost: %s", len(rows), error)

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
        spool = None
        if settings.spool_dir:
            spool, leftovers = open_spool(settings.spool_dir, writer)
            outbox = Outbox(
                spool.directory,
                settings.tracked_backlog_max_bytes,
                count_published=counts_relayed,
            )
            # Events a killed process had accepted go to the writer before anything new.
            await spool.replay(runtime.warehouse, leftovers, outbox, sessions.replaying)
            await spool.start()
        writer.start()
        made = cls(
            settings=settings,
            limiter=RateLimiter(
                redis, settings.rate_limit_per_window, settings.event_budget_per_window
            ),
            geo=GeoLocator(settings.geoip_db) if settings.geoip_db else None,
            trusted_proxies=settings.trusted_networks,
            writer=writer,
            spool=spool,
            outbox=outbox,
        )
        if outbox is not None:
            made._maintenance = asyncio.create_task(_maintain(outbox), name="outbox")
        return made

    async def close(self) -> None:
        """Write out what the writer holds; seal the spool and the outbox (what is left in
        them is replayed or relayed after a restart)."""
        await self.writer.close()
        if self.spool is not None:
            await self.spool.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self.outbox is not None:
            self.outbox.close()
            self.outbox.maintain()

    async def relayed(self, within: float) -> bool:
        """Wait up to `within` seconds for the relay to publish the outbox; True if it did."""
        if self.outbox is None:
            return True
        deadline = asyncio.get_running_loop().time() + within
        while self.outbox.backlog and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            self.outbox.maintain()
        return not self.outbox.backlog

    def release(self) -> None:
        if self.spool is not None:
            # What the publisher could not get confirmed stays, to be announced after restart.
            self.spool.trim()
            self.spool.release()
        if self.geo is not None:
            self.geo.close()


OUTBOX_TICK_S = 0.2


async def _maintain(outbox: Outbox) -> None:
    while True:
        await asyncio.sleep(OUTBOX_TICK_S)
        try:
            outbox.maintain()
        except OSError:
            log.exception("outbox maintenance failed")


def pipeline(request: Request) -> Pipeline:
    found: Pipeline = request.app.ctx.pipeline
    return found
