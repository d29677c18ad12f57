"""Liveness and readiness for orchestrators and load balancers."""

from __future__ import annotations

import asyncio

from sanic import Blueprint, Request, json
from sanic.response import JSONResponse

from consumers.broker import ping as ping_rabbitmq
from ingest.services import services

bp = Blueprint("health")


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
    ready = all(checks.values())
    return json(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )
