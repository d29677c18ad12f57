"""Report exports (ADMIN): `POST /v1/analytics/exports` queues one, `GET .../exports/{id}` tells
its state, `GET /v1/analytics/downloads/...` serves file-storage results behind signed links."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
from redis.exceptions import RedisError
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import ResponseStream, file_stream

from api.answer import answer, decoded_body
from api.auth import admin_only
from api.services import services
from core.limits import MAX_RANGE_DAYS
from core.storage import FileStorage
from materialized import export_state
from materialized.export_state import ExportState, ExportStatus
from materialized.reports import MEDIA_TYPES, Format, ReportType
from workers.runs import QueuedExport, enqueue_export

bp = Blueprint("exports")


class DateRange(msgspec.Struct, forbid_unknown_fields=True):
    from_: datetime = msgspec.field(name="from")
    to: datetime


class ExportRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    report_type: ReportType
    format: Format
    date_range: DateRange


_decode = msgspec.json.Decoder(ExportRequest).decode


class ExportQueued(msgspec.Struct, rename="camel"):
    export_id: str


class ExportAnswer(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    export_id: str
    status: ExportStatus
    report_type: ReportType
    format: Format
    date_range: DateRange
    download_url: str | None = None  # when READY: a signed link, valid until expiresAt
    expires_at: datetime | None = None
    rows: int | None = None
    error: str | None = None  # when FAILED


def _utc(moment: datetime) -> datetime:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def requester(claims: dict[str, Any]) -> uuid.UUID | None:
    """The admin's user id: the token's `sub`, which report-generated carries as requestedBy
    (notification-service finds the admin to email by it, so it must be a uuid)."""
    try:
        return uuid.UUID(str(claims.get("sub", "")))
    except ValueError:
        return None


@bp.post("/v1/analytics/exports")
@admin_only
async def create_export(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    queued = await queue_export(request, claims)
    if isinstance(queued, HTTPResponse):
        return queued
    return answer(ExportQueued(queued.export_id), status=202)


async def queue_export(request: Request, claims: dict[str, Any]) -> QueuedExport | HTTPResponse:
    """What `POST /v1/analytics/exports` does, for it and `POST /v1/admin/jobs/export`: the
    body checked, the export's state saved and its job enqueued; or the answer refusing it."""
    requested_by = requester(claims)
    if requested_by is None:
        return json(
            {
                "error": "the token's `sub` must be the admin's user id (a uuid): the"
                " report-generated message names who asked for the export",
                "path": "sub",
            },
            status=403,
        )
    body = decoded_body(_decode, request.body)
    if isinstance(body, HTTPResponse):
        return body
    try:
        start, end = _utc(body.date_range.from_), _utc(body.date_range.to)
    except OverflowError:  # e.g. 0001-01-01T00:30+01:00: before the first representable time
        return json({"error": "a time out of range", "path": "$.dateRange"}, status=400)
    if end <= start:
        return json({"error": "`to` must be after `from`", "path": "$.dateRange.to"}, status=400)
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        return json({"error": f"at most {MAX_RANGE_DAYS} days", "path": "$.dateRange"}, status=400)
    state = ExportState(
        status=ExportStatus.QUEUED,
        report_type=body.report_type,
        format=body.format,
        start=start,
        end=end,
        requested_by=str(requested_by),
        created_at=datetime.now(UTC),
    )
    try:
        return await enqueue_export(services(request).runtime.redis, state)
    except (RedisError, OSError) as error:  # down, or full (noeviction refuses the write)
        return queue_unavailable(error)


def queue_unavailable(error: Exception) -> HTTPResponse:
    return json(
        {"error": f"job queue unavailable: {error}"}, status=503, headers={"Retry-After": "5"}
    )


@bp.get("/v1/analytics/exports/<export_id:str>")
@admin_only
async def export_status(request: Request, export_id: str, claims: dict[str, Any]) -> HTTPResponse:
    try:
        uuid.UUID(export_id)
    except ValueError:
        return json({"error": f"no export {export_id!r}"}, status=404)
    try:
        state = await export_state.load(services(request).runtime.redis, export_id)
    except (RedisError, OSError) as error:
        return queue_unavailable(error)
    if state is None:
        return json({"error": f"no export {export_id!r}"}, status=404)
    found = ExportAnswer(
        export_id=export_id,
        status=state.status,
        report_type=cast(ReportType, state.report_type),
        format=cast(Format, state.format),
        date_range=DateRange(state.start, state.end),
    )
    if state.status is ExportStatus.READY and state.expires_at is not None:
        storage = services(request).runtime.storage
        found.download_url = storage.download_url(state.object_key, state.expires_at)
        found.expires_at = state.expires_at
        found.rows = state.rows
    if state.status is ExportStatus.FAILED:
        found.error = state.error
    return answer(found)


@bp.get("/v1/analytics/downloads/exports/<name:str>")
async def download(request: Request, name: str) -> HTTPResponse | ResponseStream:
    """File storage only: the link's HMAC signature and expiry are the authorisation. Only
    exports are served (`exports/<id>.<ext>`, one path segment, as the OpenAPI path says):
    the archive and anything else in storage has no route."""
    key = f"exports/{name}"
    storage = services(request).runtime.storage
    if not isinstance(storage, FileStorage):
        return json({"error": "downloads come from object storage links"}, status=404)
    if not storage.verify(key, request.args.get("expires", ""), request.args.get("signature", "")):
        return json({"error": "link invalid or expired"}, status=403)
    try:
        path = storage.path(key)
    except ValueError:
        return json({"error": "link invalid or expired"}, status=403)
    if not path.is_file():
        return json({"error": "file no longer exists"}, status=404)
    media = MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    return await file_stream(path, mime_type=media, filename=path.name)
