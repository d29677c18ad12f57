"""`GET /v1/analytics/dashboard?from=&to=` (ADMIN): the widgets for a range.

Answers come from the Redis cache (`dashboard:snapshot:{from}:{to}`, 300 s), else are computed
from the rollups, cached and kept as the range's last good answer (written to the snapshots
table every minute); if computing fails, that answer, or the newest snapshot, is returned
marked stale with its age. Times without an offset are read in REPORT_TIMEZONE; the
range is taken at hour granularity (from rounded down, to rounded up) and the answer says so.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json

from api.auth import admin_only
from api.services import Services, services
from core import keys
from core.best_effort import best_effort
from core.clickhouse import WarehouseError
from core.limits import MAX_RANGE_DAYS
from materialized import dashboard_cache, snapshots, widgets
from materialized.widgets import DashboardAnswer, Widgets

log = logging.getLogger(__name__)
bp = Blueprint("dashboard")

MAX_RANGE = timedelta(days=MAX_RANGE_DAYS)
COMPUTE_TIMEOUT_S = 10.0
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class RangeError(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parse_instant(raw: str | None, parameter: str, zone: zoneinfo.ZoneInfo) -> datetime:
    if not raw:
        raise RangeError(parameter, f"`{parameter}` is required (ISO 8601)")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise RangeError(parameter, f"`{parameter}`: {raw!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:30+01:00 is before the first representable time
        raise RangeError(parameter, f"`{parameter}`: {raw!r} is out of range") from None


def parse_range(request: Request, zone: zoneinfo.ZoneInfo) -> tuple[datetime, datetime]:
    start = parse_instant(request.args.get("from"), "from", zone)
    end = parse_instant(request.args.get("to"), "to", zone)
    if end <= start:
        raise RangeError("to", "`to` must be after `from`")
    if end - start > MAX_RANGE:
        raise RangeError("to", f"the range is longer than {MAX_RANGE.days} days")
    if start < EARLIEST or end > datetime.now(UTC) + timedelta(days=366):
        raise RangeError("from", "the range must lie between 2000 and a year from now")
    return widgets.floor_hour(start), widgets.ceil_hour(end)


def cached_json(body: bytes, cache: str) -> HTTPResponse:
    """An encoded answer, saying where it came from (`X-Cache`); never cached by clients."""
    return HTTPResponse(
        body,
        content_type="application/json",
        headers={"X-Cache": cache, "Cache-Control": "no-store"},
    )


@bp.get("/v1/analytics/dashboard")
@admin_only
async def dashboard(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    svc = services(request)
    zone = zoneinfo.ZoneInfo(svc.runtime.settings.report_timezone)
    try:
        start, end = parse_range(request, zone)
    except RangeError as error:
        return json({"error": str(error), "parameter": error.parameter}, status=400)
    key = keys.dashboard_cache(start.isoformat(), end.isoformat())
    cached: bytes | None = None
    async with best_effort("dashboard_cache"):  # Redis down: compute instead
        cached = await svc.runtime.redis.get(key)
    if cached is not None:
        return cached_json(cached, "HIT")

    pending: dashboard_cache.Pending | None = None
    async with best_effort("dashboard_cache"):
        pending = await dashboard_cache.begin(svc.runtime.redis, start, end)
    now = datetime.now(UTC)
    try:
        found = await asyncio.wait_for(
            widgets.compute(
                svc.runtime.warehouse,
                start,
                end,
                zone=zone,
                now=now,
                product_page=svc.runtime.settings.product_page_pattern,
            ),
            timeout=COMPUTE_TIMEOUT_S,
        )
    except (WarehouseError, TimeoutError) as error:
        log.warning("dashboard computation failed (%s); answering from the newest snapshot", error)
        return await _stale(svc, start, end, error)
    answer = DashboardAnswer(
        computed_at=now.isoformat(), stale=False, widgets=msgspec.convert(found, Widgets)
    )
    body = msgspec.json.encode(answer)
    if pending is not None:
        async with best_effort("dashboard_cache"):
            await dashboard_cache.remember(svc.runtime.redis, pending, body)
    svc.on_demand.add(start, end, found)
    return cached_json(body, "MISS")


async def _stale(svc: Services, start: datetime, end: datetime, error: Exception) -> HTTPResponse:
    newest = svc.on_demand.newest(start, end)
    if newest is None:
        try:
            newest = await snapshots.newest(svc.runtime.warehouse, start, end)
        except WarehouseError:
            newest = None
    if newest is None:
        return json(
            {"error": f"dashboard unavailable and no snapshot to fall back on: {error}"}, status=503
        )
    computed_at, found = newest
    age = (datetime.now(UTC) - computed_at).total_seconds()
    answer = DashboardAnswer(
        computed_at=computed_at.isoformat(),
        stale=True,
        age_seconds=round(age),
        widgets=msgspec.convert(found, Widgets),
    )
    return cached_json(msgspec.json.encode(answer), "STALE")
