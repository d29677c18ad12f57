"""The Sanic app factory: blueprints, error format, and the clients' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.connections import ArqRedis
from sanic import Request, Sanic
from sanic.exceptions import RequestCancelled
from sanic.handlers import ErrorHandler
from sanic.http import Http
from sanic.response import HTTPResponse, json

from consumers.consumer import DomainEventConsumer
from consumers.publisher import EventPublisher
from core.retry_queue import RETRY_JOB_ID, RetryBatch, RetryQueue
from core.settings import Settings
from core.storage import storage_for
from ingest import admin_jobs, dashboard, exports, openapi, ops, track, tracker
from ingest.auth import AdminAuth
from ingest.geo import GeoLocator
from ingest.ratelimit import RateLimiter
from ingest.rows import TrackingRow
from ingest.services import Services, app_services
from ingest.sessions import SessionStore
from ingest.spool import open_spool, replay
from ingest.tracked import announce_stored
from ingest.writer import BatchWriter
from materialized.migrations import migrate
from materialized.snapshots import OnDemand
from materialized.warehouse import Warehouse, WarehouseError
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


def redis_client(url: str) -> ArqRedis:
    # Short timeouts: when Redis is gone, ingest fails open quickly instead of hanging.
    client: ArqRedis = ArqRedis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    return client


SNAPSHOT_FLUSH_SECONDS = 60.0


async def _write_snapshots(on_demand: OnDemand) -> None:
    while True:
        await asyncio.sleep(SNAPSHOT_FLUSH_SECONDS)
        try:
            await on_demand.flush()
        except WarehouseError as error:
            log.warning("on-demand snapshots kept for the next minute: %s", error)


def create_app(
    settings: Settings, name: str = "lomash_analytics", *, embedded: bool = True
) -> Sanic:  # type: ignore[type-arg]
    """The API; `embedded` also runs the domain-event consumer and the arq worker in the same
    event loop (`analytics serve`, the only way with chDB)."""
    app: Sanic = Sanic(name, error_handler=JSONErrors(), configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = track.MAX_BODY_BYTES
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.blueprint(track.bp)
    app.blueprint(tracker.bp)
    app.blueprint(ops.bp)
    app.blueprint(dashboard.bp)
    app.blueprint(admin_jobs.bp)
    app.blueprint(exports.bp)
    app.blueprint(openapi.bp)
    app.ctx.admin_auth = AdminAuth(settings)
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
        warehouse = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
        await warehouse.open()
        applied = await migrate(warehouse, cluster=settings.clickhouse_cluster)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        redis = redis_client(settings.redis_url)
        retry_queue = RetryQueue(redis)
        publisher = EventPublisher(settings.amqp_url, settings.amqp_exchange)
        publisher.start()
        sessions = SessionStore(redis)

        async def hand_off(batch: RetryBatch) -> None:
            await retry_queue.push(batch)
            await redis.enqueue_job("retry_failed_batches", _job_id=RETRY_JOB_ID, _defer_by=1)

        writer: BatchWriter[TrackingRow] = BatchWriter(
            warehouse,
            "tracking_events",
            TrackingRow,
            max_rows=settings.flush_max_rows,
            interval_ms=settings.flush_interval_ms,
            prepare=sessions.enrich,
            on_stored=lambda rows: announce_stored(publisher, rows),
            hand_off=hand_off,
        )
        spool = None
        if settings.spool_dir:
            # Events a killed process had accepted are stored before anything new is taken.
            spool, leftovers = open_spool(settings.spool_dir, lambda: writer.done_through)
            spool.adopt(await replay(warehouse, leftovers, publisher))
            spool.start()
        writer.start()
        limit, per = settings.rate_limit_per_window
        storage = storage_for(settings)
        app.ctx.services = Services(
            settings=settings,
            warehouse=warehouse,
            redis=redis,
            retry_queue=retry_queue,
            publisher=publisher,
            limiter=RateLimiter(redis, limit, per),
            event_budget=RateLimiter(redis, *settings.event_budget_per_window, prefix="lw:rle:"),
            geo=GeoLocator(settings.geoip_db) if settings.geoip_db else None,
            trusted_proxies=settings.trusted_networks,
            tracking_writer=writer,
            storage=storage,
            spool=spool,
            on_demand=OnDemand(warehouse),
        )
        app.ctx.snapshot_writer = asyncio.create_task(
            _write_snapshots(app_services(app).on_demand), name="on-demand-snapshots"
        )
        app.ctx.worker = None
        app.ctx.consumer = None
        if embedded:
            consumer = DomainEventConsumer.for_settings(settings, warehouse, redis)
            consumer.start()
            app.ctx.consumer = consumer
            try:
                await retry_queue.recover()
            except Exception as error:
                log.warning("could not recover in-flight retries (Redis down?): %s", error)
            worker = EmbeddedWorker(
                settings.redis_url,
                {
                    "settings": settings,
                    "warehouse": warehouse,
                    "publisher": publisher,
                    "retry_queue": retry_queue,
                    "storage": storage,
                },
            )
            worker.start()
            app.ctx.worker = worker

    @app.after_server_stop
    async def close_clients(app: Sanic) -> None:  # type: ignore[type-arg]
        svc = app_services(app)
        app.ctx.snapshot_writer.cancel()
        await asyncio.gather(app.ctx.snapshot_writer, return_exceptions=True)
        with contextlib.suppress(WarehouseError):
            await svc.on_demand.flush()
        await svc.tracking_writer.close()
        if svc.spool is not None:
            await svc.spool.close()
        if app.ctx.consumer is not None:
            await app.ctx.consumer.close()
        if app.ctx.worker is not None:
            await app.ctx.worker.close()
        await svc.publisher.close()
        if svc.spool is not None:
            # What the publisher could not get confirmed stays, to be announced after restart.
            svc.spool.trim()
            svc.spool.release()
        await svc.redis.aclose()
        if svc.geo is not None:
            svc.geo.close()
        await svc.warehouse.close()

    return app
