"""What the API process says on the ops endpoints (`core/ops.py` serves them): readiness of
ClickHouse, Redis, RabbitMQ (and the consumer in `serve`), and the gauges it refreshes before
a scrape."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import msgspec
from redis.exceptions import RedisError

from api.services import Services
from consumers.consumer import ConsumerStatus
from core.best_effort import best_effort
from core.metrics import PUBLISH_BACKLOG, RATES, RETRY_QUEUE_DEPTH, UNPLACED_ROWS
from core.ops import Check, OpsHooks, run_checks
from core.redis_memory import RedisRole, observe
from materialized import snapshots


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str  # "ready" or "not ready"
    checks: dict[str, bool]  # clickhouse, redis, rabbitmq, and consumer in `serve`
    consumer: ConsumerStatus | None = None


async def _redis_ok(svc: Services) -> bool:
    try:
        return bool(await svc.runtime.redis.ping())
    except (RedisError, OSError):  # any failure to answer is the answer: not ready
        return False


def hooks_for(svc: Services) -> OpsHooks:
    async def rabbitmq() -> bool:  # the live connection's state: none opened per call
        return svc.runtime.publisher.is_connected

    async def readiness() -> tuple[bool, Any]:
        status = svc.consumer.status() if svc.consumer is not None else None
        checks: dict[str, Check] = {
            "clickhouse": svc.runtime.warehouse.ping,
            "redis": partial(_redis_ok, svc),
            "rabbitmq": rabbitmq,
        }
        found = await run_checks(checks)
        if status is not None:
            found["consumer"] = status.ready
        ready = all(found.values())
        return ready, Readiness("ready" if ready else "not ready", found, status)

    async def before_scrape() -> None:
        """No ClickHouse query per scrape: the snapshot age comes from the time the rebuild
        job last finished, kept in Redis."""
        refresh_gauges(svc)
        async with best_effort("metrics"):
            depth, fresh = await asyncio.wait_for(
                asyncio.gather(
                    svc.ingest.retry_queue.depth(),
                    snapshots.freshness_for_scrape(svc.runtime.redis, svc.runtime.warehouse),
                ),
                timeout=1,
            )
            RETRY_QUEUE_DEPTH.set(depth)
            snapshots.observe(fresh)
        async with best_effort("metrics"):
            await asyncio.wait_for(
                asyncio.gather(
                    observe(RedisRole.DURABLE, svc.runtime.redis),
                    observe(RedisRole.EPHEMERAL, svc.runtime.cache),
                ),
                timeout=1,
            )

    return OpsHooks(readiness, before_scrape, svc.runtime.settings.metrics_token)


def refresh_gauges(svc: Services) -> None:
    """The gauges this process derives from its own state: at every scrape, and every few
    seconds (`api/app.py`), so that with several API workers the ones not scraped are current."""
    RATES.refresh_gauges()
    tracking_log = svc.ingest.log
    # The relay's backlog (on disk) and this process's own publisher's (the other topics).
    PUBLISH_BACKLOG.set(svc.runtime.publisher.backlog + tracking_log.backlog)
    UNPLACED_ROWS.set(tracking_log.unread_rows)
