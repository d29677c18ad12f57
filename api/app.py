"""The Sanic app factory: blueprints, error format, and the clients' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sanic import Request, Sanic
from sanic.exceptions import RequestCancelled
from sanic.handlers import ErrorHandler
from sanic.http import Http
from sanic.response import HTTPResponse, json

from api import admin_jobs, admin_page, assets, dashboard, exports, openapi, ops, stats
from api.auth import AdminAuth
from api.connections import ConnectionLimits, raise_descriptor_limit
from api.services import Services, app_services
from consumers.consumer import DomainEventConsumer
from core.clickhouse import WarehouseError
from core.metrics import process_exiting
from core.runtime import Role, Runtime
from core.settings import Settings
from ingest import track, tracker
from ingest.pipeline import Pipeline
from ingest.relay import RelayChild
from materialized.snapshots import OnDemand
from workers.context import JobContext
from workers.embedded import EmbeddedWorker

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


def create_app(
    settings: Settings,
    name: str = "lomash_analytics",
    *,
    embedded: bool = True,
    relay: bool = False,
) -> Sanic:  # type: ignore[type-arg]
    """The API; `embedded` also runs the domain-event consumer and the arq worker in the same
    event loop (`analytics serve`, the only way with chDB). `relay`: start the `event.tracked`
    relay as a child process (`serve`); otherwise it runs apart (`analytics relay`)."""
    app: Sanic = Sanic(name, error_handler=JSONErrors(), configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = track.MAX_BODY_BYTES
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.blueprint(track.bp)
    app.blueprint(tracker.bp)
    app.blueprint(ops.bp)
    app.blueprint(dashboard.bp)
    app.blueprint(stats.bp)
    app.blueprint(admin_jobs.bp)
    app.blueprint(exports.bp)
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
    async def open_clients(app: Sanic) -> None:  # type: ignore[type-arg]
        roles = {Role.HTTP, Role.INGEST} | ({Role.CONSUMER, Role.WORKER} if embedded else set())
        runtime = await Runtime.open(settings, roles)
        svc = Services(
            runtime=runtime,
            pipeline=await Pipeline.open(runtime, counts_relayed=relay),
            on_demand=OnDemand(runtime.warehouse),
        )
        app.ctx.services = svc
        app.ctx.pipeline = svc.pipeline  # what the beacon blueprint reads
        app.ctx.relay = RelayChild(settings) if relay else None
        app.ctx.snapshot_writer = asyncio.create_task(
            _write_snapshots(svc.on_demand), name="on-demand-snapshots"
        )
        app.ctx.rate_refresher = asyncio.create_task(_refresh_gauges(svc), name="gauges")
        if embedded:
            svc.consumer = DomainEventConsumer.for_settings(
                settings, runtime.warehouse, runtime.redis
            )
            svc.consumer.start()
            svc.worker = EmbeddedWorker(settings.redis_url, JobContext.of(runtime))
            svc.worker.start()

    @app.after_server_stop
    async def close_clients(app: Sanic) -> None:  # type: ignore[type-arg]
        svc = app_services(app)
        app.ctx.snapshot_writer.cancel()
        app.ctx.rate_refresher.cancel()
        await asyncio.gather(
            app.ctx.snapshot_writer, app.ctx.rate_refresher, return_exceptions=True
        )
        with contextlib.suppress(WarehouseError):
            await svc.on_demand.flush()
        await svc.pipeline.close()
        if app.ctx.relay is not None:
            # The relay gets a few seconds to publish what is placed; the rest waits on disk.
            await svc.pipeline.relayed(within=5.0)
            await app.ctx.relay.stop()
        if svc.consumer is not None:
            await svc.consumer.close()
        if svc.worker is not None:
            await svc.worker.close()
        await svc.runtime.close()
        svc.pipeline.release()
        process_exiting()

    return app
