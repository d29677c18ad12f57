"""The arq worker: its jobs, cron schedule and clients (for `arq workers.WorkerSettings`).

`analytics serve` runs the same functions and crons in its own event loop with the API's
clients; standalone, `open_clients` makes them from the environment.
"""

from __future__ import annotations

from typing import Any

from arq import cron, func
from arq.connections import RedisSettings
from arq.typing import WorkerCoroutine
from arq.worker import Function

from consumers.publisher import EventPublisher
from core.retry_queue import RetryQueue
from core.settings import load_settings
from core.storage import storage_for
from materialized.migrations import migrate
from materialized.warehouse import Warehouse
from workers.jobs import (
    archive_historical_data,
    check_dashboard_freshness,
    export_report,
    purge_old_events,
    rebuild_dashboards,
    recompute_funnels,
    remove_old_exports,
    retry_failed_batches,
)

FUNCTIONS: list[WorkerCoroutine | Function] = [
    # No result kept: a kept result would block the next run queued under RETRY_JOB_ID.
    func(retry_failed_batches, keep_result=0),
    recompute_funnels,
    rebuild_dashboards,
    check_dashboard_freshness,
    export_report,
    remove_old_exports,
    archive_historical_data,
    purge_old_events,
]
CRON_JOBS = [
    cron(retry_failed_batches, second=set(range(0, 60, 10)), run_at_startup=True),
    cron(recompute_funnels, minute={0, 30}, second={10}),
    cron(rebuild_dashboards, minute={5}, second={20}),
    cron(check_dashboard_freshness, minute=set(range(0, 60, 10)), second={40}),
    cron(remove_old_exports, hour={3}, minute={15}),
    cron(archive_historical_data, hour={2}, minute={30}),
    cron(purge_old_events, hour={4}, minute={0}),
]


async def open_clients(ctx: dict[str, Any]) -> None:
    settings = load_settings()
    warehouse = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
    await warehouse.open()
    await migrate(warehouse, cluster=settings.clickhouse_cluster)
    publisher = EventPublisher(settings.amqp_url, settings.amqp_exchange)
    publisher.start()
    queue = RetryQueue(ctx["redis"])
    await queue.recover()
    storage = storage_for(settings)
    ctx.update(
        settings=settings,
        warehouse=warehouse,
        publisher=publisher,
        retry_queue=queue,
        storage=storage,
    )


async def close_clients(ctx: dict[str, Any]) -> None:
    await ctx["publisher"].close()
    await ctx["warehouse"].close()


def worker_settings() -> type:
    settings = load_settings()
    settings.require_download_key()  # fails at start, naming DOWNLOAD_SIGNING_KEY

    class WorkerSettings:
        functions = FUNCTIONS
        cron_jobs = CRON_JOBS
        on_startup = open_clients
        on_shutdown = close_clients
        redis_settings = RedisSettings.from_dsn(settings.redis_url)

    return WorkerSettings
