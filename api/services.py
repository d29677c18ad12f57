"""What the HTTP app serves from: its runtime, the beacon path's parts, and the dashboard's
on-demand snapshots (and in `serve` the consumer and worker), made by the assembly
that starts and stops them (cli/assembly.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sanic import Request, Sanic

from consumers.consumer import DomainEventConsumer
from core.runtime import Runtime
from ingest.parts import IngestParts
from materialized.snapshots import OnDemand
from workers.embedded import EmbeddedWorker


@dataclass(slots=True)
class Services:
    runtime: Runtime
    ingest: IngestParts
    on_demand: OnDemand  # dashboard answers waiting to be written as snapshots
    consumer: DomainEventConsumer | None = None  # in `serve` only
    worker: EmbeddedWorker | None = None  # in `serve` only


def services(request: Request) -> Services:
    return app_services(request.app)


def app_services(app: Sanic) -> Services:  # type: ignore[type-arg]
    found: Services = app.ctx.services
    return found
