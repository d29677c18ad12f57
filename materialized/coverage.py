"""Which stretch of time each stored aggregate already covers, so late events can redo it.

recompute_funnels and rebuild_dashboards each record, when they finish, the period their
results were computed over and when (`[start, computed_at)`). An event that occurred in that
stretch but arrived after it was computed is late: the stored funnel or snapshot misses it.
The consumer then enqueues the job again. A pending mark coalesces a stream of late events
into one recompute: while a run is queued and not yet started, more late events queue nothing;
the run clears the mark as it starts, before it reads, so an event stored after that queues the
next run and none is missed. Nothing here depends on where a clock window happens to fall.
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
DEFER_SECONDS = 30  # late events arriving within this of the first share its run
# A queued run that is lost (the queue flushed) stops holding back the next one after this.
PENDING_TTL_SECONDS = 600


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
    """Queue `job` unless a run is already queued and not started; True when this call queued."""
    pending = keys.late_pending(job)
    if not await redis.set(pending, now.timestamp(), nx=True, ex=PENDING_TTL_SECONDS):
        return False
    queued = await redis.enqueue_job(
        job, _job_id=f"{job}:late:{now.timestamp():.6f}", _defer_by=DEFER_SECONDS
    )
    if queued is None:  # that very id is taken: let the next late event try again
        await redis.delete(pending)
    return queued is not None


async def starting(redis: Redis, job: Job) -> None:
    """Called as a run of `job` starts, before it reads: late events from now on queue anew."""
    await redis.delete(keys.late_pending(job))
