"""Operations endpoints: liveness, readiness (ClickHouse, Redis, RabbitMQ) and Prometheus."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import JSONResponse

from consumers.broker import ping as ping_rabbitmq
from consumers.consumer import DomainEventConsumer
from core.metrics import DASHBOARD_SNAPSHOT_AGE, PUBLISH_BACKLOG, RATES, RETRY_QUEUE_DEPTH
from ingest.services import services
from materialized import snapshots

bp = Blueprint("ops")


@bp.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    return json({"status": "ok"})


async def _redis_ok(request: Request) -> bool:
    try:
        return bool(await services(request).redis.ping())
    except Exception:
        return False


@bp.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    svc = services(request)
    clickhouse, redis, rabbitmq = await asyncio.gather(
        asyncio.wait_for(svc.warehouse.ping(), timeout=3),
        _redis_ok(request),
        ping_rabbitmq(svc.settings.amqp_url),
        return_exceptions=True,
    )
    checks = {
        name: ok is True
        for name, ok in (("clickhouse", clickhouse), ("redis", redis), ("rabbitmq", rabbitmq))
    }
    body: dict[str, Any] = {"checks": checks}
    consumer: DomainEventConsumer | None = request.app.ctx.consumer
    if consumer is not None:
        status = consumer.status()
        checks["consumer"] = status.ready
        body["consumer"] = msgspec.to_builtins(status)
    ready = all(checks.values())
    body["status"] = "ready" if ready else "not ready"
    return json(body, status=200 if ready else 503)


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    svc = services(request)
    RATES.refresh_gauges()
    PUBLISH_BACKLOG.set(svc.publisher.backlog)
    try:
        depth = await asyncio.wait_for(svc.retry_queue.depth(), timeout=1)
        RETRY_QUEUE_DEPTH.labels("redis").set(depth)
    except Exception:
        pass  # the gauge keeps its last value; redis_unavailable tells the rest
    try:
        age = await asyncio.wait_for(snapshots.age_minutes(svc.warehouse), timeout=2)
        if age is not None:
            DASHBOARD_SNAPSHOT_AGE.set(age)
    except Exception:
        pass
    return HTTPResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
