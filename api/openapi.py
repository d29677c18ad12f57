"""The OpenAPI 3.1 document of every endpoint, at `/docs/openapi.json`, and a page at `/docs`.

Request bodies and the tracking event come from the msgspec structs the code decodes with, so
the document cannot drift from what is enforced."""

from __future__ import annotations

from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import html

from api.exports import ExportRequest
from ingest.schema import MAX_EVENTS_PER_REQUEST, TrackingEvent

bp = Blueprint("openapi")

_, COMPONENTS = msgspec.json.schema_components(
    [TrackingEvent, ExportRequest], ref_template="#/components/schemas/{name}"
)
# msgspec describes Raw as "any"; the endpoint requires an object.
COMPONENTS["TrackingEvent"]["properties"]["properties"] = {"type": "object"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OBJECT = {"type": "object"}
ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
DENIED = {"401": _error("no valid token"), "403": _error("not an ADMIN")}
TRACK_BODY = {
    "oneOf": [
        {"$ref": "#/components/schemas/TrackingEvent"},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EVENTS_PER_REQUEST,
            "items": {"$ref": "#/components/schemas/TrackingEvent"},
        },
    ]
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Lomash Wood analytics", "version": "1.0.0"},
    "components": {
        "schemas": {
            **COMPONENTS,
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "path": {"type": "string"},
                    "parameter": {"type": "string"},
                    "rejected": {"type": "array"},
                },
            },
        },
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
    "paths": {
        "/v1/analytics/track": {
            "post": {
                "summary": "Track one event or an array of up to 100",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": TRACK_BODY},
                        "text/plain": {"schema": TRACK_BODY},
                    },
                },
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {
                                "eventId": {"type": "string", "format": "uuid"},
                                "accepted": {"type": "integer"},
                                "rejected": {"type": "array"},
                                "eventIds": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "accepted",
                    ),
                    "400": _error("invalid; `path` names the field"),
                    "413": _error("body over 64 KiB or more than 100 events"),
                    "415": _error("not application/json or text/plain"),
                    "429": _error("rate limited; see Retry-After"),
                },
            }
        },
        "/v1/analytics/tracker.js": {
            "get": {
                "summary": "The tracker script",
                "responses": {
                    "200": {
                        "description": "JavaScript",
                        "content": {"application/javascript": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "not modified"},
                },
            }
        },
        "/v1/analytics/dashboard": {
            "get": {
                "summary": "Dashboard widgets for a range",
                "security": ADMIN,
                "parameters": [
                    {
                        "name": name,
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "date-time"},
                    }
                    for name in ("from", "to")
                ],
                "responses": {
                    "200": _json(OBJECT, "widgets"),
                    "400": _error("bad range"),
                    **DENIED,
                    "503": _error("no data and no snapshot"),
                },
            }
        },
        "/v1/analytics/exports": {
            "post": {
                "summary": "Queue a report export",
                "security": ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ExportRequest"}
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        {"type": "object", "properties": {"exportId": {"type": "string"}}}, "queued"
                    ),
                    "400": _error("invalid; `path` names the field"),
                    **DENIED,
                },
            }
        },
        "/v1/analytics/exports/{exportId}": {
            "get": {
                "summary": "An export's state and, when ready, its download link",
                "security": ADMIN,
                "parameters": [
                    {
                        "name": "exportId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(OBJECT, "state"),
                    **DENIED,
                    "404": _error("unknown export"),
                },
            }
        },
        "/v1/analytics/downloads/{key}": {
            "get": {
                "summary": "A file-storage export, behind a signed, expiring link",
                "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "expires",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "signature",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {"description": "the file"},
                    "403": _error("link invalid or expired"),
                    "404": _error("no such file"),
                },
            }
        },
        "/v1/admin/jobs/rebuild-dashboards": {
            "post": {
                "summary": "Rebuild the dashboards now",
                "security": ADMIN,
                "responses": {
                    "202": _json(
                        {"type": "object", "properties": {"jobId": {"type": "string"}}}, "queued"
                    ),
                    **DENIED,
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(OBJECT, "alive")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness of ClickHouse, Redis and RabbitMQ",
                "responses": {
                    "200": _json(OBJECT, "ready"),
                    "503": _json(OBJECT, "a dependency is down"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Lomash Wood analytics API</title>
</head><body><h1>Lomash Wood analytics API</h1>
<p>The OpenAPI 3.1 document: <a href="/docs/openapi.json">/docs/openapi.json</a>. Load it into
any OpenAPI viewer or client generator.</p><ul>%s</ul></body></html>"""


@bp.get("/docs/openapi.json")
async def openapi_json(request: Request) -> HTTPResponse:
    return json(DOCUMENT)


@bp.get("/docs")
async def docs(request: Request) -> HTTPResponse:
    items = "".join(
        f"<li><code>{method.upper()} {path}</code>: {spec['summary']}</li>"
        for path, methods in DOCUMENT["paths"].items()
        for method, spec in methods.items()
    )
    return html(PAGE % items)
