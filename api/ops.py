"""Operations endpoints: liveness, readiness (ClickHouse, Redis, RabbitMQ) and Prometheus."""

from __future__ import annotations

import asyncio
import time

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from sanic import Blueprint, HTTPResponse, Request, json

from api.answer import answer
from api.services import Services, services
from consumers.consumer import ConsumerStatus
from core.best_effort import best_effort
from core.metrics import (
    PUBLISH_BACKLOG,
    RATES,
    RETRY_QUEUE_DEPTH,
    UNPLACED_ROWS,
    exposition,
)
from core.ops_server import bearer_matches
from core.redis_memory import RedisRole, observe
from materialized import snapshots

bp = Blueprint("ops")


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str  # "ready" or "not ready"
    checks: dict[str, bool]  # clickhouse, redis, rabbitmq, and consumer in `serve`
    consumer: ConsumerStatus | None = None


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return answer(Health("ok"))


async def _redis_ok(request: Request) -> bool:
    try:
        return bool(await services(request).runtime.redis.ping())
    except (RedisError, OSError):  # any failure to answer is the answer: not ready
        return False


READY_CACHE_SECONDS = 2.0


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """ClickHouse and Redis asked (at most every 2 s: a probe storm must not become a query
    storm), RabbitMQ from the live connections' state (no connection opened per call)."""
    cached = request.app.ctx.__dict__.get("readiness")
    if cached is not None and time.monotonic() - cached[0] < READY_CACHE_SECONDS:
        return answer(cached[1], status=cached[2])
    svc = services(request)
    clickhouse, redis = await asyncio.gather(
        asyncio.wait_for(svc.runtime.warehouse.ping(), timeout=3),
        _redis_ok(request),
        return_exceptions=True,
    )
    checks = {
        "clickhouse": clickhouse is True,
        "redis": redis is True,
        "rabbitmq": svc.runtime.publisher.is_connected,
    }
    status = svc.consumer.status() if svc.consumer is not None else None
    if status is not None:
        checks["consumer"] = status.ready
    ready = all(checks.values())
    body = Readiness("ready" if ready else "not ready", checks, status)
    code = 200 if ready else 503
    request.app.ctx.readiness = (time.monotonic(), body, code)
    return answer(body, status=code)


def refresh_gauges(svc: Services) -> None:
    """The gauges this process derives from its own state: at every scrape, and every few
    seconds (`api/app.py`), so that with several API workers the ones not scraped are current."""
    RATES.refresh_gauges()
    tracking_log = svc.pipeline.log
    # The relay's backlog (on disk) and this process's own publisher's (the other topics).
    PUBLISH_BACKLOG.set(svc.runtime.publisher.backlog + tracking_log.backlog)
    UNPLACED_ROWS.set(tracking_log.unread_rows)


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    """Prometheus text. No ClickHouse query per scrape: the snapshot age comes from the time
    the rebuild job last finished, kept in Redis."""
    svc = services(request)
    token = svc.runtime.settings.metrics_token
    if token and not bearer_matches(request.headers.get("authorization", ""), token):
        return json({"error": "bearer token required (METRICS_TOKEN)"}, status=401)
    refresh_gauges(svc)
    async with best_effort("metrics"):
        depth, fresh = await asyncio.wait_for(
            asyncio.gather(
                svc.runtime.retry_queue.depth(),
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
    return HTTPResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
