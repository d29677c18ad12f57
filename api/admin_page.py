"""`GET /admin`: the built-in dashboard page (api/static/admin). It holds no data: it asks for an
ADMIN token in the browser and reads the same API as any client, so it needs no auth itself.

The page runs only its own scripts (a Content-Security-Policy of 'self'), so that a value a
beacon made up, shown in a table, can never run as code even if written unescaped."""

from __future__ import annotations

from html import escape

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import html

from api.assets import STATIC_DIR
from api.funnels import DOMAIN_TYPES, TRACKING_TYPES
from api.services import services
from api.stats import EVENT_TYPES
from core.jobs import WITHOUT_ARGUMENTS

bp = Blueprint("admin_page")

PAGE = (
    (STATIC_DIR / "admin" / "index.html")
    .read_text()
    .replace("{{TRACKING_TYPES}}", " ".join(t for t in EVENT_TYPES if t in TRACKING_TYPES))
    .replace("{{DOMAIN_TYPES}}", " ".join(sorted(DOMAIN_TYPES)))
    .replace("{{JOBS}}", " ".join(WITHOUT_ARGUMENTS))  # the jobs the panel runs: not export
)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@bp.get("/admin")
async def admin_page(request: Request) -> HTTPResponse:
    zone = services(request).runtime.settings.report_timezone
    return html(PAGE.replace("{{TIMEZONE}}", escape(zone, quote=True)), headers=HEADERS)
