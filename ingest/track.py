"""`POST /v1/analytics/track`: the beacon endpoint. Validates, stamps, buffers, answers 202."""

from __future__ import annotations

from sanic import Blueprint, Request, json
from sanic.response import JSONResponse

from ingest.enrich import Context, now, to_row
from ingest.schema import BodyError, decode_body
from ingest.services import services

bp = Blueprint("track")

MAX_BODY_BYTES = 64 * 1024
_ACCEPTED_TYPES = ("application/json", "text/plain", "")


def _error(status: int, message: str, path: str = "$") -> JSONResponse:
    return json({"error": message, "path": path}, status=status)


@bp.post("/v1/analytics/track")
async def track(request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # sendBeacon posts text/plain so that the browser skips the CORS preflight.
    if content_type not in _ACCEPTED_TYPES:
        return _error(
            415, f"content type {content_type!r} not accepted; send application/json or text/plain"
        )
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"body of {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        decoded = decode_body(body)
    except BodyError as error:
        return _error(error.status, str(error), error.path)

    rejected = [{"index": r.index, "error": r.error, "path": r.path} for r in decoded.rejected]
    if not decoded.events:
        return json({"error": "no event in the array is valid", "rejected": rejected}, 400)

    ctx = Context(received_at=now(), client_ip=request.ip)
    rows = [to_row(event, ctx) for _, event in decoded.events]
    services(request).tracking_writer.add([row.values() for row in rows])

    if not decoded.is_array:
        return json({"eventId": str(rows[0].event_id)}, status=202)
    return json(
        {
            "accepted": len(rows),
            "rejected": rejected,
            "eventIds": [str(row.event_id) for row in rows],
        },
        status=202,
    )
