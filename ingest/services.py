"""The clients one API process holds, opened at server start and closed at stop."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sanic import Request, Sanic

from core.settings import Settings
from ingest.writer import BatchWriter
from materialized.warehouse import Warehouse


@dataclass(slots=True)
class Services:
    settings: Settings
    warehouse: Warehouse
    redis: Redis
    tracking_writer: BatchWriter


def services(request: Request) -> Services:
    found: Services = request.app.ctx.services
    return found


def app_services(app: Sanic) -> Services:  # type: ignore[type-arg]
    found: Services = app.ctx.services
    return found
