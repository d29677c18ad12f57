"""`GET /v1/analytics/ingest?from&to` (ADMIN): the ledger of accepted tracking events per UTC
hour and the lags of a 202 (materialized/ingest_ledger.py). Live, never cached: it is what
an operator reads while something is wrong."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sanic import Blueprint, HTTPResponse, Request, json

from api.answer import answer
from api.auth import admin_only
from api.dashboard import RangeError, parse_range
from api.services import services
from api.stats import bad_parameter, report_zone
from core.clickhouse import WarehouseError
from ingest import announce_lags
from materialized.ingest_ledger import ledger

bp = Blueprint("ingest_ledger")


@bp.get("/v1/analytics/ingest")
@admin_only
async def ingest_ledger(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    svc = services(request)
    try:
        start, end = parse_range(request, report_zone(svc))
    except RangeError as error:
        return bad_parameter(error)
    hours = [start + timedelta(hours=h) for h in range(int((end - start) / timedelta(hours=1)))]
    announced = announce_lags.read(Path(svc.runtime.settings.tracking_log_dir), hours)
    try:
        found = await ledger(
            svc.runtime.warehouse, start, end, svc.ingest.log.unread_by_hour(), announced
        )
    except WarehouseError as error:
        return json({"error": f"ledger unavailable: {error}"}, status=503)
    return answer(found, headers={"Cache-Control": "no-store"})
