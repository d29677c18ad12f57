"""`/healthz`, `/readyz` and `/metrics`: one Sanic blueprint for every process.

The API mounts it in its app; `analytics consume`, `analytics relay` and the arq worker, which
serve no HTTP API, serve it alone on `METRICS_PORT` (`serve_ops`). What differs per process is
given as `OpsHooks`: how it decides it is ready, what it refreshes before a scrape, and the
bearer token `/metrics` asks for (METRICS_TOKEN).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from sanic import Blueprint, HTTPResponse, Request, Sanic, json

from core.metrics import exposition

READY_CACHE_SECONDS = 2.0  # a probe storm must not become a query storm
CHECK_TIMEOUT_SECONDS = 3.0

# (ready, the body to answer with: a Struct or anything msgspec encodes)
Readiness = Callable[[], Awaitable[tuple[bool, Any]]]
Check = Callable[[], Awaitable[bool]]


async def run_checks(checks: Mapping[str, Check]) -> dict[str, bool]:
    """Every check asked at once, each within CHECK_TIMEOUT_SECONDS: one that answers other
    than True, raises or is slower is False."""
    answers = await asyncio.gather(
        *(asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS) for check in checks.values()),
        return_exceptions=True,
    )
    return {name: answer is True for name, answer in zip(checks, answers, strict=True)}


def readiness(
    checks: Mapping[str, Check], details: Callable[[], dict[str, Any]] = dict
) -> Readiness:
    """Every process's readiness: ready when each check is; the body `{status, checks}` and the
    process's own `details`."""

    async def ready() -> tuple[bool, Any]:
        found = await run_checks(checks)
        ok = all(found.values())
        return ok, {"status": "ready" if ok else "not ready", "checks": found, **details()}

    return ready


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class OpsHooks:
    readiness: Readiness
    before_scrape: Callable[[], Awaitable[None]] = _nothing
    metrics_token: str = ""


class Health(msgspec.Struct):
    status: str


def bearer_matches(header: str, token: str) -> bool:
    """`header` is `Bearer <token>`; compared in constant time."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


bp = Blueprint("ops")


def hooks(request: Request) -> OpsHooks:
    found: OpsHooks = request.app.ctx.ops
    return found


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return HTTPResponse(msgspec.json.encode(Health("ok")), content_type="application/json")


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    """Asked at most every READY_CACHE_SECONDS; 200 when ready, 503 when not."""
    cached = request.app.ctx.__dict__.get("ready_answer")
    if cached is None or time.monotonic() - cached[0] >= READY_CACHE_SECONDS:
        ready, body = await hooks(request).readiness()
        cached = (time.monotonic(), msgspec.json.encode(body), 200 if ready else 503)
        request.app.ctx.ready_answer = cached
    return HTTPResponse(cached[1], status=cached[2], content_type="application/json")


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    found = hooks(request)
    token = found.metrics_token
    if token and not bearer_matches(request.headers.get("authorization", ""), token):
        return json({"error": "bearer token required (METRICS_TOKEN)"}, status=401)
    await found.before_scrape()
    return HTTPResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


class OpsServer:
    """The blueprint served alone, in the running event loop, on `port`."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def port(self) -> int:
        port: int = self._server.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        await self._server.before_stop()
        self._server.close()
        await self._server.wait_closed()
        await self._server.after_stop()


async def serve_ops(host: str, port: int, ops: OpsHooks, *, role: str) -> OpsServer:
    app: Sanic = Sanic(f"ops_{role}_{os.getpid()}", configure_logging=False)  # type: ignore[type-arg]
    app.config.ACCESS_LOG = False
    app.config.REQUEST_TIMEOUT = 5.0  # a client that sends no complete request in time: closed
    app.config.REQUEST_MAX_SIZE = 8192  # three GETs: no bodies
    app.config.KEEP_ALIVE_TIMEOUT = 5.0
    app.blueprint(bp)
    app.ctx.ops = ops
    server = await app.create_server(
        host=host, port=port, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    running: Any = server  # Sanic's AsyncioServer: its lifecycle methods are untyped
    await running.startup()
    await running.before_start()
    await running.after_start()
    return OpsServer(running)
