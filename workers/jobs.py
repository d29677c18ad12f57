"""arq jobs, named by what they do (core/jobs.py). Each takes arq's ctx and reads its typed
`JobContext` (workers/context.py) from it."""

from __future__ import annotations

import logging
import time
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from arq import Retry

from core import contracts, keys
from core.best_effort import best_effort
from core.clickhouse import WarehouseError
from core.contracts import (
    ALERT_RAISED,
    DASHBOARD_REFRESHED,
    FUNNEL_COMPLETED,
    REPORT_GENERATED,
    AlertRaised,
    DashboardRefreshed,
    ReportGenerated,
    Topic,
)
from core.ids import new_event_id
from core.jobs import Job, erasure_job_id
from core.metrics import (
    AGGREGATION_JOB_DURATION,
    EXPORT_DURATION,
    EXPORT_FAILURES,
)
from materialized import (
    archive,
    counters,
    coverage,
    dashboard_cache,
    erasure,
    export_state,
    funnels,
    reports,
    session_hours,
    snapshots,
    widgets,
)
from materialized.export_state import ExportStatus
from tracked import accounting
from tracked.message import record_stored
from tracked.row import TrackingRow
from workers.context import JobContext, job_context

log = logging.getLogger(__name__)

_tracking_rows = msgspec.json.Decoder(TrackingRow)


RETRY_BATCHES_PER_RUN = 20  # read from Redis at once; each is inserted with its own token
RETRY_RUN_SECONDS = 60.0  # well inside arq's job timeout; the cron picks up the rest


async def retry_failed_batches(ctx: dict[str, Any]) -> str:
    """Insert the batches waiting in the retry queue, oldest first, each with the token of its
    place in the tracking log (so a batch whose first insert did land is not stored again),
    and take each off the queue once stored. The first refusal ends the run; the next comes
    from the next hand-off (at most one is queued: `RETRY_JOB_ID`) or from the cron every 10 s.
    The batches were announced (event.tracked) when the writer handed them here."""
    job = job_context(ctx)
    queue, warehouse = job.retry_queue, job.warehouse
    stored = 0
    deadline = time.monotonic() + RETRY_RUN_SECONDS
    while time.monotonic() < deadline:
        waiting = await queue.oldest(RETRY_BATCHES_PER_RUN)
        if not waiting:
            break
        for raw, batch in waiting:
            try:
                # A refusal for the data isolates the refused rows; they are kept apart.
                refused = await warehouse.insert_isolating(
                    batch.table, batch.columns, batch.data, dedup_token=batch.token
                )
            except WarehouseError as error:
                log.warning("retry of a batch of %d rows failed: %s", batch.rows, error)
                return f"stored {stored} rows; ClickHouse still refusing"
            at = datetime.now(UTC)
            data = batch.data
            if refused:
                await queue.dead_letter(batch.table, [(line, why) for _, line, why in refused])
                dropped = {i for i, _, _ in refused}
                data = b"".join(
                    line
                    for i, line in enumerate(data.splitlines(keepends=True))
                    if i not in dropped
                )
            if batch.table == "tracking_events":
                kept = _tracking_rows.decode_lines(data)
                ledger = accounting.retried(
                    accounting.received_times(batch.data, at),
                    [row.received_at for row in kept],
                    accounting.received_times(b"".join(line for _, line, _ in refused), at),
                    at,
                )
                try:
                    # Before the batch leaves the queue: a run cut short here counts it once
                    # when the next run stores it again (the same token).
                    await warehouse.insert_lines(
                        accounting.TABLE,
                        accounting.COLUMNS,
                        ledger.lines(),
                        dedup_token=f"{batch.token}:ledger-retry",
                    )
                except WarehouseError as error:
                    log.warning("the ledger of a retried batch failed: %s", error)
                    return f"stored {stored} rows; ClickHouse refusing the ledger"
            await queue.done(raw)
            stored += batch.rows - len(refused)
            if batch.table == "tracking_events":
                record_stored(kept)
    return f"stored {stored} rows"


FUNNEL_PERIOD = timedelta(days=30)
STALE_AFTER_MINUTES = 120


def _publish(job: JobContext, topic: Topic, payload: Any) -> None:
    if job.publisher is None:
        return  # a context without a publisher (the demo, some tests) stores only
    message_id, body = contracts.encode(topic, payload)
    job.publisher.publish(topic.routing_key, message_id, body)


async def _starting(job: JobContext, name: Job) -> None:
    if job.redis is not None:
        async with best_effort("coverage"):
            await coverage.starting(job.redis, name)


async def recompute_funnels(ctx: dict[str, Any]) -> str:
    """Each funnel over the last 30 days to the current hour: stored in `funnels`, published."""
    started = time.perf_counter()
    job = job_context(ctx)
    warehouse, settings = job.warehouse, job.settings
    await _starting(job, Job.RECOMPUTE_FUNNELS)
    computed_at = datetime.now(UTC)
    end = widgets.ceil_hour(computed_at)
    results = []
    for funnel in funnels.FUNNELS.values():
        result = await funnels.compute(
            warehouse,
            funnel,
            end - FUNNEL_PERIOD,
            end,
            settings.funnel_window_seconds,
            settings.product_page_pattern,
        )
        funnel_id = new_event_id()
        await warehouse.command(
            "INSERT INTO funnels (funnel_id, computed_at, funnel, period_start, period_end,"
            " window_seconds, step_names, step_counts, conversion_rate) VALUES ({id:UUID},"
            " now64(3), {funnel:String},"
            " {start:DateTime64(3, 'UTC')}, {end:DateTime64(3, 'UTC')}, {window:UInt32},"
            " {names:Array(String)}, {counts:Array(UInt64)}, {rate:Float64})",
            {
                "id": funnel_id,
                "funnel": result.funnel,
                "start": result.period_start,
                "end": result.period_end,
                "window": result.window_seconds,
                "names": [name for name, _ in result.steps],
                "counts": [count for _, count in result.steps],
                "rate": result.conversion_rate,
            },
        )
        _publish(job, FUNNEL_COMPLETED, result.as_payload(funnel_id))
        results.append(f"{result.funnel} {result.conversion_rate}%")
    redis = job.redis
    if redis is not None:
        # Every cached dashboard shows the latest funnels: none of them is current now.
        async with best_effort("dashboard_cache"):
            await dashboard_cache.invalidate(redis)
        async with best_effort("coverage"):
            await coverage.record(redis, Job.RECOMPUTE_FUNNELS, end - FUNNEL_PERIOD, computed_at)
    AGGREGATION_JOB_DURATION.labels("recompute-funnels").observe(
        (time.perf_counter() - started) * 1000
    )
    return "; ".join(results)


async def rebuild_dashboards(ctx: dict[str, Any]) -> str:
    """Today, this week, this month and the last 30 days: snapshots saved and announced."""
    started = time.perf_counter()
    job = job_context(ctx)
    warehouse, settings = job.warehouse, job.settings
    await _starting(job, Job.REBUILD_DASHBOARDS)
    zone = zoneinfo.ZoneInfo(settings.report_timezone)
    now = datetime.now(UTC)
    end = widgets.ceil_hour(now)
    periods = widgets.local_periods(now, zone)
    ranges = {
        "today": periods["today"],
        "week": periods["week"],
        "month": periods["month"],
        "last-30-days": end - timedelta(days=30),
    }
    written = []
    for label, start in ranges.items():
        found = await widgets.compute(
            warehouse, start, end, zone=zone, now=now, product_page=settings.product_page_pattern
        )
        snapshot_id = await snapshots.save(warehouse, start, end, label, found)
        written.append(
            DashboardRefreshed(
                snapshot_id=snapshot_id,
                computed_at=now,
                label=label,
                range_from=start,
                range_to=end,
            )
        )
    redis = job.redis
    if redis is not None:
        async with best_effort("dashboard_cache"):
            await dashboard_cache.invalidate(redis)
        async with best_effort("coverage"):
            await coverage.record(redis, Job.REBUILD_DASHBOARDS, min(ranges.values()), now)
            await snapshots.mark_rebuilt(redis, now)
        # The live tiles, made good from ClickHouse for days Redis missed increments.
        async with best_effort("live_counters"):
            await counters.reconcile(redis, warehouse, zone, now.astimezone(zone).date())
    snapshots.observe(snapshots.Freshness(now, rebuilt=True))
    for refreshed in written:  # one message per snapshot row written
        _publish(job, DASHBOARD_REFRESHED, refreshed)
    AGGREGATION_JOB_DURATION.labels("rebuild-dashboards").observe(
        (time.perf_counter() - started) * 1000
    )
    return f"rebuilt {len(ranges)} dashboards"


async def check_dashboard_freshness(ctx: dict[str, Any]) -> str:
    """Alert once when the scheduled rebuild (hourly) has not written a snapshot for two hours,
    counted from installation while it never has, and once more when it is fresh again; Redis
    remembers which was sent."""
    job = job_context(ctx)
    found = await snapshots.freshness(job.warehouse)
    snapshots.observe(found)
    age = found.minutes if found.rebuilt else None
    stale = found.minutes > STALE_AFTER_MINUTES
    redis = job.need_redis()
    if not found.rebuilt and not stale:
        return f"not yet due: installed {found.minutes:.0f} min ago, never rebuilt"
    if stale:
        # SET NX: of several workers checking at once, one raises it.
        if not await redis.set(keys.DASHBOARD_STALE_ALERT, datetime.now(UTC).isoformat(), nx=True):
            return f"still stale: {'no snapshot' if age is None else f'{age:.0f} min'}"
        _publish(
            job,
            ALERT_RAISED,
            AlertRaised(
                alert_type="DASHBOARD_STALE",
                status="RAISED",
                severity="WARNING",
                audience="ADMIN",
                message="No dashboard snapshot newer than two hours: rebuild-dashboards is failing"
                if age is not None
                else f"No dashboard snapshot in the {found.minutes:.0f} minutes since"
                " installation: rebuild-dashboards has never run",
                snapshot_age_minutes=None if age is None else round(age),
            ),
        )
        return "alert raised"
    assert age is not None
    if not await redis.delete(keys.DASHBOARD_STALE_ALERT):
        return f"fresh: {age:.0f} min"
    _publish(
        job,
        ALERT_RAISED,
        AlertRaised(
            alert_type="DASHBOARD_STALE",
            status="RESOLVED",
            severity="INFO",
            audience="ADMIN",
            message="Dashboard snapshots are fresh again",
            snapshot_age_minutes=round(age),
        ),
    )
    return f"recovered: {age:.0f} min"


EXPORT_LIFETIME = timedelta(days=7)


def _requester_id(requested_by: str) -> uuid.UUID:
    """The uuid the API checked; the nil uuid for a state queued before it checked."""
    try:
        return uuid.UUID(requested_by)
    except ValueError:
        return uuid.UUID(int=0)


async def export_report(ctx: dict[str, Any], export_id: str) -> str:
    """Stream one report from ClickHouse into `exports/{id}.{csv|json}`."""
    started = time.perf_counter()
    job = job_context(ctx)
    redis, storage, settings = job.need_redis(), job.need_storage(), job.settings
    state = await export_state.load(redis, export_id)
    if state is None:
        return f"export {export_id} unknown (expired?)"
    state.status = ExportStatus.RUNNING
    await export_state.save(redis, export_id, state)
    object_key = f"exports/{export_id}.{reports.EXTENSIONS[state.format]}"
    try:
        writer = await storage.writer(object_key)
        try:
            rows = await reports.write_report(
                job.warehouse,
                state.report_type,  # type: ignore[arg-type]
                state.format,  # type: ignore[arg-type]
                state.start,
                state.end,
                zoneinfo.ZoneInfo(settings.report_timezone),
                writer.write,
                funnel_window_seconds=settings.funnel_window_seconds,
                product_page=settings.product_page_pattern,
            )
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
    except Exception as error:  # whatever failed, the export ends FAILED with the reason
        EXPORT_FAILURES.inc()
        state.status, state.error = ExportStatus.FAILED, f"{type(error).__name__}: {error}"[:500]
        await export_state.save(redis, export_id, state)
        log.warning("export %s failed: %s", export_id, state.error)
        return f"export {export_id} failed: {state.error}"
    expires = datetime.now(UTC) + EXPORT_LIFETIME
    state.status, state.object_key, state.expires_at, state.rows = (
        ExportStatus.READY,
        object_key,
        expires,
        rows,
    )
    await export_state.save(redis, export_id, state)
    EXPORT_DURATION.observe((time.perf_counter() - started) * 1000)
    _publish(
        job,
        REPORT_GENERATED,
        ReportGenerated(
            export_id=uuid.UUID(export_id),
            report_type=state.report_type,
            format=state.format,
            download_url=storage.download_url(object_key, expires),
            expires_at=expires,
            requested_by=_requester_id(state.requested_by),
            rows=rows,
        ),
    )
    return f"export {export_id}: {rows} rows"


async def remove_old_exports(ctx: dict[str, Any]) -> str:
    storage = job_context(ctx).need_storage()
    removed = await storage.delete_older_than("exports/", EXPORT_LIFETIME)
    return f"removed {removed} export files"


async def archive_historical_data(ctx: dict[str, Any]) -> str:
    """Every day of raw events from day 80 not yet archived, to cold storage as Parquet,
    verified; a day that fails stays hot and the run fails, naming it, after trying the rest."""
    job = job_context(ctx)
    today = datetime.now(UTC).date()
    try:
        days = await archive.days_to_archive(job.warehouse, today)
        done, failed = await archive.archive_days(job.warehouse, job.need_storage(), days)
    finally:
        async with best_effort("archive_gauge"):
            await archive.days_behind(job.warehouse, today)
    summary = f"archived {len(done)} days, {sum(a.rows for a in done)} rows"
    if failed:
        reasons = "; ".join(f"{day}: {reason}" for day, reason in failed.items())
        raise RuntimeError(f"{summary}; {len(failed)} days kept hot, not archived: {reasons}")
    return summary


async def purge_old_events(ctx: dict[str, Any]) -> str:
    """Remove raw days past retention whose verified archive still matches them."""
    job = job_context(ctx)
    today = datetime.now(UTC).date()
    days = await archive.purge(job.warehouse, job.storage, today)
    async with best_effort("archive_gauge"):
        await archive.days_behind(job.warehouse, today)
    return f"purged {len(days)} days"


async def seal_session_hours(ctx: dict[str, Any]) -> str:
    """Sum the sessions of every start hour old enough and touched since its last seal
    (materialized/session_hours.py): the overview's sessions for long ranges."""
    return f"sealed {await session_hours.seal(job_context(ctx).warehouse)} hours"


ERASE_TRIES = 8  # a step failing (storage down) is tried again, 30 s more apart each time


async def erase_user(
    ctx: dict[str, Any], erasure_id: str, user_id: str, requested_by: str = "cli"
) -> str:
    """Erase a user's data (materialized/erasure.py), resuming where an earlier run stopped;
    one that must wait (an hour still being written, rows queued for retry) is queued again
    for then."""
    job = job_context(ctx)
    store = erasure.ErasureStore(job.warehouse)
    record = await store.get(uuid.UUID(erasure_id))
    if record is None:  # queued by `analytics erase`, which does not open ClickHouse
        record = erasure.Record(
            erasure_id=uuid.UUID(erasure_id),
            user_hash=erasure.user_hash(
                job.settings.erasure_audit_key.encode(), uuid.UUID(user_id)
            ),
            requested_by=requested_by,
            requested_at=datetime.now(UTC),
        )
        await store.save(record)
    if record.status in (erasure.ErasureStatus.DONE, erasure.ErasureStatus.FAILED):
        return f"erasure {erasure_id}: {record.status.value} already"
    redis = job.need_redis()
    run = erasure.Erasure(
        job.warehouse,
        job.storage,
        redis,
        job.retry_queue,
        zoneinfo.ZoneInfo(job.settings.report_timezone),
        record,
        uuid.UUID(user_id),
    )
    try:
        again = await run.run(datetime.now(UTC))
    except Exception as error:
        tries = int(ctx.get("job_try", 1))
        record.error = f"{type(error).__name__}: {error}"
        if tries >= ERASE_TRIES:
            record.status, record.finished_at = erasure.ErasureStatus.FAILED, datetime.now(UTC)
        async with best_effort("erasure_state"):
            await store.save(record)
        if tries >= ERASE_TRIES:
            raise
        raise Retry(defer=30 * tries) from error
    if again is not None:
        await redis.enqueue_job(
            Job.ERASE_USER,
            erasure_id,
            user_id,
            requested_by,
            _job_id=f"{erasure_job_id(erasure_id)}:{int(again.timestamp())}",
            _defer_until=again,
        )
        return f"erasure {erasure_id}: waiting until {again.isoformat()}"
    return f"erasure {erasure_id}: {record.status.value}, removed {record.removed}"
