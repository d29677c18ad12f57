"""CORS for the beacon: any origin or an allow-list, never credentials, preflight cached a day."""

from __future__ import annotations

from sanic import HTTPResponse, Request

PREFLIGHT_MAX_AGE = "86400"


def allowed_origin(request: Request, origins: tuple[str, ...]) -> str | None:
    if not origins or "*" in origins:
        return "*"
    origin = request.headers.get("origin")
    return origin if origin in origins else None


def add_headers(request: Request, response: HTTPResponse, origins: tuple[str, ...]) -> None:
    origin = allowed_origin(request, origins)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = "Retry-After"


def preflight(request: Request, origins: tuple[str, ...]) -> HTTPResponse:
    response = HTTPResponse(status=204)
    if allowed_origin(request, origins) is not None:
        add_headers(request, response, origins)
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response
