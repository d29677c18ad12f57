"""The arq worker: its jobs, cron schedule and clients (for `arq workers.WorkerSettings`).

`analytics serve` runs the same functions and crons in its own event loop with the API's
runtime; standalone, `open_clients` opens one from the environment.
"""

from __future__ import annotations

from typing import Any

from arq import cron, func
from arq.connections import RedisSettings
from arq.typing import WorkerCoroutine
from arq.worker import Function

from core.ops import OpsHooks, readiness, serve_ops
from core.runtime import Role, Runtime
from core.settings import load_settings
from workers.context import JobContext
from workers.jobs import (
    ERASE_TRIES,
    archive_historical_data,
    check_dashboard_freshness,
    erase_user,
    export_report,
    purge_old_events,
    rebuild_dashboards,
    recompute_funnels,
    remove_old_exports,
    retry_failed_batches,
    seal_session_hours,
)

# How long arq keeps a finished run's result (its default is an hour): a day, so that the
# admin API's and `analytics jobs`' recent runs still show last night's archive, purge and
# clean-up the next morning. About 220 results a day (the 10-second retry keeps none).
KEEP_RESULT_SECONDS = 86_400
# arq's default, pinned: a run's in-progress key is set for this plus 10 s when it starts (no
# function sets a timeout of its own), which is how the listing tells when a RUNNING one began.
JOB_TIMEOUT_SECONDS = 300
IN_PROGRESS_SECONDS = JOB_TIMEOUT_SECONDS + 10

FUNCTIONS: list[WorkerCoroutine | Function] = [
    # No result kept: a kept result would block the next run queued under RETRY_JOB_ID (and
    # one every 10 s would be 8,640 results a day to read for a listing).
    func(retry_failed_batches, keep_result=0),
    recompute_funnels,
    rebuild_dashboards,
    check_dashboard_freshness,
    export_report,
    remove_old_exports,
    archive_historical_data,
    purge_old_events,
    seal_session_hours,
    # The job's arguments hold the user id: no result keeps them once it is done. An erasure
    # saves each step, so the job timeout costs only the step it cut (tried again).
    func(erase_user, keep_result=0, max_tries=ERASE_TRIES),
]
CRON_JOBS = [
    cron(retry_failed_batches, second=set(range(0, 60, 10)), run_at_startup=True),
    cron(recompute_funnels, minute={0, 30}, second={10}),
    cron(rebuild_dashboards, minute={5}, second={20}),
    cron(check_dashboard_freshness, minute=set(range(0, 60, 10)), second={40}),
    cron(remove_old_exports, hour={3}, minute={15}),
    cron(archive_historical_data, hour={2}, minute={30}),
    cron(purge_old_events, hour={4}, minute={0}),
    cron(seal_session_hours, minute=set(range(2, 60, 10)), second={50}),
]


async def open_clients(ctx: dict[str, Any]) -> None:
    """The worker's runtime on arq's own Redis pool; the jobs get a typed context; with
    METRICS_PORT, `/metrics`, `/healthz` and `/readyz` on it."""
    settings = load_settings()
    runtime = await Runtime.open(settings, {Role.WORKER}, redis=ctx["redis"])
    ctx["runtime"] = runtime
    ctx["job"] = JobContext.of(runtime)
    if settings.metrics_port:

        async def redis() -> bool:
            return bool(await runtime.redis.ping())

        ready = readiness({"clickhouse": runtime.warehouse.ping, "redis": redis})
        ctx["ops"] = await serve_ops(
            settings.host,
            settings.metrics_port,
            OpsHooks(ready, metrics_token=settings.metrics_token),
            role="worker",
        )


async def close_clients(ctx: dict[str, Any]) -> None:
    if "ops" in ctx:
        await ctx["ops"].close()
    runtime: Runtime = ctx["runtime"]
    await runtime.close()


def worker_settings() -> type:
    settings = load_settings()
    settings.require_download_key()  # fails at start, naming DOWNLOAD_SIGNING_KEY

    class WorkerSettings:
        functions = FUNCTIONS
        cron_jobs = CRON_JOBS
        keep_result = KEEP_RESULT_SECONDS
        job_timeout = JOB_TIMEOUT_SECONDS
        on_startup = open_clients
        on_shutdown = close_clients
        redis_settings = RedisSettings.from_dsn(settings.redis_url)

    return WorkerSettings
