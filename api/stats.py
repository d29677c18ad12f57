"""The stats API (ADMIN): overview, breakdown, timeseries, realtime and property keys for any
range (funnels: api/funnels.py).

Ranges are read as the dashboard's (naive times in REPORT_TIMEZONE, taken at hour
granularity); a bad parameter is a 400 naming it. Answers but realtime are kept in Redis:
ranges that ended over a day ago (nothing can still change them) for CLOSED_CACHE_SECONDS,
others for OPEN_CACHE_SECONDS; a Redis failure only costs the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import typing
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json

from api.auth import admin_only
from api.dashboard import RangeError, cached_json, parse_range
from api.services import Services, services
from core import keys
from core.best_effort import best_effort
from core.clickhouse import WarehouseError
from ingest.schema import EventType
from materialized import properties
from materialized.stats import (
    MAX_BREAKDOWN_LIMIT,
    MAX_HOURLY_POINTS,
    FilterError,
    Interval,
    Stats,
    check_dimension,
    parse_filter,
)

bp = Blueprint("stats")

CLOSED_CACHE_SECONDS = 300
OPEN_CACHE_SECONDS = 15
# Sessions can still gain events this long after they start (the session step's TTL).
SETTLED_AFTER = timedelta(days=1)
QUERY_TIMEOUT_S = 20.0
EVENT_TYPES: tuple[str, ...] = typing.get_args(EventType)


class BadParameter(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def report_zone(svc: Services) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(svc.runtime.settings.report_timezone)


def _stats(request: Request) -> Stats:
    svc = services(request)
    return Stats(svc.runtime.warehouse, report_zone(svc))


def _filters(request: Request) -> dict[str, str]:
    try:
        return parse_filter(request.args.get("filter"))
    except FilterError as error:
        raise BadParameter("filter", f"`filter`: {error}") from None


def whole_number(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadParameter(name, f"`{name}` must be a whole number from {low} to {high}")
    return int(raw)


def choice(request: Request, name: str, allowed: list[str], default: str | None = None) -> str:
    raw = request.args.get(name, default)
    if raw is None:
        raise BadParameter(name, f"`{name}` is required: one of {' '.join(allowed)}")
    if raw not in allowed:
        raise BadParameter(name, f"`{name}`: {raw!r} is not one of {' '.join(allowed)}")
    return str(raw)


def _dimension(request: Request) -> str:
    raw = request.args.get("dimension")
    if raw is None:
        raise BadParameter("dimension", "`dimension` is required: a dimension or prop:KEY")
    try:
        return check_dimension(raw)
    except FilterError as error:
        raise BadParameter("dimension", f"`dimension`: {error}") from None


def _event_type(request: Request) -> str | None:
    raw = request.args.get("eventType")
    if raw is None:
        return None
    if raw not in EVENT_TYPES:
        raise BadParameter(
            "eventType", f"`eventType`: {raw!r} is not one of {' '.join(EVENT_TYPES)}"
        )
    return str(raw)


def _cache_key(request: Request, start: datetime, end: datetime, variant: str) -> str:
    args = sorted((k, v) for k, values in request.args.items() for v in values)
    canonical = f"{request.path}|{start.isoformat()}|{end.isoformat()}|{args}|{variant}"
    return keys.stats_cache(hashlib.sha256(canonical.encode()).hexdigest()[:32])


async def cached_answer(
    request: Request,
    start: datetime,
    end: datetime,
    compute: Callable[[], Awaitable[Any]],
    variant: str = "",
) -> HTTPResponse:
    """`variant`: what else the answer depends on (a defined funnel's steps)."""
    svc = services(request)
    key = _cache_key(request, start, end, variant)
    cached: bytes | None = None
    async with best_effort("stats_cache"):
        cached = await svc.runtime.cache.get(key)
    if cached is not None:
        return cached_json(cached, "HIT")
    try:
        body = await _computed(compute)
    except (WarehouseError, TimeoutError) as error:
        return _unavailable(error)
    settled = end <= datetime.now(UTC) - SETTLED_AFTER
    async with best_effort("stats_cache"):
        await svc.runtime.cache.set(
            key, body, ex=CLOSED_CACHE_SECONDS if settled else OPEN_CACHE_SECONDS
        )
    return cached_json(body, "MISS")


async def _computed(compute: Callable[[], Awaitable[Any]]) -> bytes:
    return msgspec.json.encode(await asyncio.wait_for(compute(), timeout=QUERY_TIMEOUT_S))


def _unavailable(error: Exception) -> HTTPResponse:
    return json({"error": f"stats unavailable: {error}"}, status=503)


def bad_parameter(error: RangeError | BadParameter) -> HTTPResponse:
    return json({"error": str(error), "parameter": error.parameter}, status=400)


@bp.get("/v1/analytics/stats/overview")
@admin_only
async def overview(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    stats = _stats(request)
    try:
        start, end = parse_range(request, stats.zone)
        filters = _filters(request)
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(request, start, end, lambda: stats.overview(start, end, filters))


@bp.get("/v1/analytics/stats/breakdown")
@admin_only
async def breakdown(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    stats = _stats(request)
    try:
        dimension = _dimension(request)
        start, end = parse_range(request, stats.zone)
        limit = whole_number(request, "limit", 10, 1, MAX_BREAKDOWN_LIMIT)
        filters = _filters(request)
        event_type = _event_type(request)
        if event_type is not None and properties.key_of(dimension) is None:
            raise BadParameter("eventType", "`eventType` goes with a `prop:KEY` dimension only")
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(
        request,
        start,
        end,
        lambda: stats.breakdown(dimension, start, end, filters, limit, event_type),
    )


@bp.get("/v1/analytics/stats/properties")
@admin_only
async def property_keys(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    stats = _stats(request)
    try:
        start, end = parse_range(request, stats.zone)
        event_type = _event_type(request)
        limit = whole_number(request, "limit", 100, 1, properties.MAX_KEYS)
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(
        request,
        start,
        end,
        lambda: properties.keys(stats.warehouse, start, end, event_type, limit),
    )


@bp.get("/v1/analytics/stats/timeseries")
@admin_only
async def timeseries(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    stats = _stats(request)
    try:
        interval = Interval(choice(request, "interval", [i.value for i in Interval]))
        start, end = parse_range(request, stats.zone)
        filters = _filters(request)
        if interval is Interval.HOUR and end - start > timedelta(hours=MAX_HOURLY_POINTS):
            raise BadParameter(
                "interval", f"`interval=hour` covers at most {MAX_HOURLY_POINTS // 24} days"
            )
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(
        request, start, end, lambda: stats.timeseries(start, end, interval, filters)
    )


@bp.get("/v1/analytics/stats/realtime")
@admin_only
async def realtime(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    stats = _stats(request)
    try:
        body = await _computed(lambda: stats.realtime(datetime.now(UTC)))
    except (WarehouseError, TimeoutError) as error:
        return _unavailable(error)
    return cached_json(body, "NONE")
