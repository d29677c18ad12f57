"""Which stretch of time each stored aggregate already covers, so late events can redo it.

recompute_funnels and rebuild_dashboards each record, when they finish, the period their
results were computed over and when (`[start, computed_at)`). An event that occurred in that
stretch but arrived after it was computed is late: the stored funnel or snapshot misses it.
The consumer then enqueues the job again, coalesced under one job id per five minutes, so a
stream of late events costs one recompute, not one per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from arq.connections import ArqRedis
from redis.asyncio import Redis

from core import keys
from core.jobs import Job

# job -> the event types its results count (None: every domain event)
AGGREGATES: dict[Job, frozenset[str] | None] = {
    Job.RECOMPUTE_FUNNELS: frozenset({"order-created", "payment-succeeded"}),
    Job.REBUILD_DASHBOARDS: None,
}
COALESCE_SECONDS = 300


async def record(redis: Redis, job: Job, start: datetime, computed_at: datetime) -> None:
    await redis.set(keys.covered(job), f"{start.timestamp()} {computed_at.timestamp()}")


async def late_jobs(redis: Redis, events: Iterable[tuple[str, datetime]]) -> list[Job]:
    """The jobs whose stored results miss some of `events` ((event type, occurred at))."""
    jobs = list(AGGREGATES)
    covered = await redis.mget([keys.covered(job) for job in jobs])
    events = list(events)
    late = []
    for job, value in zip(jobs, covered, strict=True):
        if value is None:
            continue
        start, until = (float(part) for part in value.split())
        types = AGGREGATES[job]
        if any(
            (types is None or event_type in types) and start <= at.timestamp() < until
            for event_type, at in events
        ):
            late.append(job)
    return late


async def enqueue_recompute(redis: ArqRedis, job: Job, now: datetime) -> bool:
    """Queue `job` once per COALESCE_SECONDS window; True when this call queued it."""
    window = int(now.timestamp()) // COALESCE_SECONDS
    queued = await redis.enqueue_job(job, _job_id=f"{job}:late:{window}", _defer_by=30)
    return queued is not None
