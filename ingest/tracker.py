"""`GET /v1/analytics/tracker.js`: the first-party tracker, cacheable, gzip when accepted."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from sanic import Blueprint, HTTPResponse, Request

bp = Blueprint("tracker")

SCRIPT = (Path(__file__).parent / "static" / "tracker.js").read_bytes()
SCRIPT_GZIP = gzip.compress(SCRIPT, compresslevel=9, mtime=0)
ETAG = '"' + hashlib.sha256(SCRIPT).hexdigest()[:20] + '"'


@bp.get("/v1/analytics/tracker.js")
async def tracker_js(request: Request) -> HTTPResponse:
    headers = {
        "Cache-Control": "public, max-age=3600, stale-while-revalidate=86400",
        "ETag": ETAG,
        "Vary": "Accept-Encoding",
        "Access-Control-Allow-Origin": "*",
    }
    if ETAG in request.headers.get("if-none-match", ""):
        return HTTPResponse(status=304, headers=headers)
    body = SCRIPT
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = SCRIPT_GZIP
        headers["Content-Encoding"] = "gzip"
    return HTTPResponse(body, headers=headers, content_type="application/javascript; charset=utf-8")
