"""The Sanic app factory: blueprints, error format, and the clients' lifecycle."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from sanic import Request, Sanic
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from core.settings import Settings
from ingest import health, track
from ingest.rows import TRACKING_COLUMNS
from ingest.services import Services, app_services
from ingest.writer import BatchWriter
from materialized.migrations import migrate
from materialized.warehouse import Warehouse

log = logging.getLogger(__name__)


class JSONErrors(ErrorHandler):
    """Every error, Sanic's own (404, 405, 413) included, answers `{"error": ...}`."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        status = getattr(exception, "status_code", 500)
        if status >= 500:
            log.exception(
                "unhandled error on %s %s", request.method, request.path, exc_info=exception
            )
            return json({"error": "internal error"}, status=500)
        headers = getattr(exception, "headers", None) or {}
        return json({"error": str(exception)}, status=status, headers=headers)


def create_app(settings: Settings, name: str = "lomash_analytics") -> Sanic:  # type: ignore[type-arg]
    app: Sanic = Sanic(name, error_handler=JSONErrors(), configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = track.MAX_BODY_BYTES
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.blueprint(track.bp)
    app.blueprint(health.bp)

    @app.before_server_start
    async def open_clients(app: Sanic) -> None:  # type: ignore[type-arg]
        warehouse = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
        await warehouse.open()
        applied = await migrate(warehouse, cluster=settings.clickhouse_cluster)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        writer = BatchWriter(
            warehouse,
            "tracking_events",
            TRACKING_COLUMNS,
            max_rows=settings.flush_max_rows,
            interval_ms=settings.flush_interval_ms,
        )
        writer.start()
        app.ctx.services = Services(
            settings=settings,
            warehouse=warehouse,
            redis=Redis.from_url(settings.redis_url),
            tracking_writer=writer,
        )

    @app.after_server_stop
    async def close_clients(app: Sanic) -> None:  # type: ignore[type-arg]
        svc = app_services(app)
        await svc.tracking_writer.close()
        await svc.redis.aclose()
        await svc.warehouse.close()

    return app
