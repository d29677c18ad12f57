"""The clients one API process holds, opened at server start and closed at stop."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from sanic import Request, Sanic

from consumers.publisher import EventPublisher
from core.retry_queue import RetryQueue
from core.settings import Settings
from core.storage import Storage
from ingest.client_ip import Network
from ingest.geo import GeoLocator
from ingest.ratelimit import RateLimiter
from ingest.rows import TrackingRow
from ingest.spool import Spool
from ingest.writer import BatchWriter
from materialized.snapshots import OnDemand
from materialized.warehouse import Warehouse


@dataclass(slots=True)
class Services:
    settings: Settings
    warehouse: Warehouse
    redis: ArqRedis  # a redis.asyncio client that can also enqueue arq jobs
    retry_queue: RetryQueue
    publisher: EventPublisher
    limiter: RateLimiter  # requests per client
    event_budget: RateLimiter  # events per client
    geo: GeoLocator | None
    trusted_proxies: tuple[Network, ...]
    tracking_writer: BatchWriter[TrackingRow]
    storage: Storage
    spool: Spool | None
    on_demand: OnDemand  # dashboard answers waiting to be written as snapshots


def services(request: Request) -> Services:
    return app_services(request.app)


def app_services(app: Sanic) -> Services:  # type: ignore[type-arg]
    found: Services = app.ctx.services
    return found
