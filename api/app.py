"""The Sanic app factory: blueprints, the error format, and the HTTP app's own timers. What
runs beside it (the runtime, the beacon path's parts and, in `serve`, the consumer, worker
and relay) is an assembly started before the server serves and stopped after
(`cli/assembly.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from sanic import Request, Sanic
from sanic.exceptions import RequestCancelled
from sanic.handlers import ErrorHandler
from sanic.http import Http
from sanic.response import HTTPResponse, json

from api import (
    admin_jobs,
    admin_page,
    assets,
    behaviour,
    dashboard,
    erasures,
    exports,
    funnels,
    ingest_ledger,
    openapi,
    ops,
    stats,
)
from api.auth import AdminAuth
from api.connections import ConnectionLimits, raise_descriptor_limit
from api.services import Services, app_services
from core import ops as core_ops
from core.clickhouse import WarehouseError
from core.metrics import process_exiting
from core.settings import Settings
from ingest import track, tracker
from materialized.snapshots import OnDemand

log = logging.getLogger(__name__)


class JSONErrors(ErrorHandler):
    """Every error, Sanic's own (404, 405, 413) included, answers `{"error": ...}`."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, RequestCancelled):
            # The client went away mid-request; nobody is left to answer.
            return HTTPResponse(status=499)
        status = getattr(exception, "status_code", 500)
        if status >= 500:
            log.exception(
                "unhandled error on %s %s", request.method, request.path, exc_info=exception
            )
            return json({"error": "internal error"}, status=500)
        headers = getattr(exception, "headers", None) or {}
        return json({"error": str(exception)}, status=status, headers=headers)


SNAPSHOT_FLUSH_SECONDS = 60.0


GAUGES_REFRESH_SECONDS = 5.0


async def _refresh_gauges(svc: Services) -> None:
    # Gauges are otherwise set when this process serves a scrape; with several API workers a
    # scrape reaches one of them and sums the others' last values, so each keeps its own
    # current.
    while True:
        await asyncio.sleep(GAUGES_REFRESH_SECONDS)
        ops.refresh_gauges(svc)


async def _write_snapshots(on_demand: OnDemand) -> None:
    while True:
        await asyncio.sleep(SNAPSHOT_FLUSH_SECONDS)
        try:
            await on_demand.flush()
        except WarehouseError as error:
            log.warning("on-demand snapshots kept for the next minute: %s", error)


class Parts(Protocol):
    """What runs beside the HTTP app (cli/assembly.py): started before it serves, stopped
    after."""

    async def start(self) -> Services: ...

    async def stop(self) -> None: ...


def create_app(settings: Settings, parts: Parts, name: str = "lomash_analytics") -> Sanic:  # type: ignore[type-arg]
    """The HTTP app over `parts` (`Assembly.serve` or `Assembly.api`)."""
    app: Sanic = Sanic(name, error_handler=JSONErrors(), configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = track.MAX_BODY_BYTES
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.blueprint(track.bp)
    app.blueprint(tracker.bp)
    app.blueprint(core_ops.bp)
    app.blueprint(dashboard.bp)
    app.blueprint(stats.bp)
    app.blueprint(behaviour.bp)
    app.blueprint(funnels.bp)
    app.blueprint(admin_jobs.bp)
    app.blueprint(erasures.bp)
    app.blueprint(exports.bp)
    app.blueprint(ingest_ledger.bp)
    app.blueprint(openapi.bp)
    app.blueprint(assets.bp)
    app.blueprint(admin_page.bp)
    app.ctx.admin_auth = AdminAuth(settings)
    app.ctx.connection_limits = ConnectionLimits(
        total=min(settings.max_connections, max(16, raise_descriptor_limit() - 512)),
        per_address=settings.max_connections_per_client,
        deadline_s=settings.request_deadline_seconds,
        trusted=settings.trusted_networks,
    )
    app.ctx.stopping = False

    @app.before_server_stop
    async def stop_keeping_alive(app: Sanic) -> None:  # type: ignore[type-arg]
        app.ctx.stopping = True

    @app.on_response  # type: ignore[untyped-decorator]
    async def close_when_stopping(request: Request, response: HTTPResponse) -> None:
        # Sanic closes only idle connections at shutdown and waits out the rest; a client that
        # keeps a connection busy would hold the shutdown for the whole grace period. From the
        # signal on, every answer closes its connection ("Connection: close").
        if request.app.ctx.stopping and isinstance(request.stream, Http):
            request.stream.keep_alive = False

    @app.before_server_start
    async def start_parts(app: Sanic) -> None:  # type: ignore[type-arg]
        svc = await parts.start()
        app.ctx.services = svc
        app.ctx.ingest = svc.ingest  # what the beacon blueprint reads
        app.ctx.ops = ops.hooks_for(svc)  # what /readyz and /metrics ask
        app.ctx.timers = [
            asyncio.create_task(_write_snapshots(svc.on_demand), name="on-demand-snapshots"),
            asyncio.create_task(_refresh_gauges(svc), name="gauges"),
        ]

    @app.after_server_stop
    async def stop_parts(app: Sanic) -> None:  # type: ignore[type-arg]
        svc = app_services(app)
        for timer in app.ctx.timers:
            timer.cancel()
        await asyncio.gather(*app.ctx.timers, return_exceptions=True)
        with contextlib.suppress(WarehouseError):
            await svc.on_demand.flush()
        await parts.stop()
        process_exiting()

    return app
