"""The OpenAPI 3.1 document of every endpoint, at `/docs/openapi.json`, and a reference page at
`/docs` (Redoc, vendored in api/static, so it works offline).

Request bodies and every answer's schema come from the msgspec Structs the code decodes and
encodes with, so the document cannot drift from what is enforced and sent; the fuzz test
(tests/test_hostile_input.py) checks every answer against it."""

from __future__ import annotations

from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import html

from api.admin_jobs import JobQueued
from api.answer import ErrorAnswer
from api.behaviour import GOALS
from api.erasures import ErasureQueued, ErasureRequest
from api.exports import ExportAnswer, ExportQueued, ExportRequest
from api.funnels import FunnelReport
from api.ops import Readiness
from api.stats import EVENT_TYPES
from core.jobs import BY_COMMAND, WITHOUT_ARGUMENTS
from core.ops import Health
from ingest.schema import MAX_EVENTS_PER_REQUEST, TrackingEvent
from ingest.track import Accepted, AcceptedMany
from materialized import journeys, retention
from materialized.dimensions import DIMENSIONS
from materialized.erasure import ErasureAnswer
from materialized.funnel_definitions import FunnelCreated, FunnelDefinition, FunnelList
from materialized.ingest_ledger import IngestLedger
from materialized.journeys import Journeys
from materialized.properties import MAX_KEY_CHARS, MAX_KEYS, PropertyKeys
from materialized.retention import CohortBy, Retention
from materialized.stats import (
    MAX_BREAKDOWN_LIMIT,
    Breakdown,
    Overview,
    Realtime,
    Timeseries,
)
from materialized.widgets import DashboardAnswer
from workers import runs
from workers.runs import JobList

bp = Blueprint("openapi")

STRUCTS = [
    TrackingEvent,
    Accepted,
    AcceptedMany,
    ErrorAnswer,
    DashboardAnswer,
    ExportRequest,
    ExportQueued,
    ExportAnswer,
    JobQueued,
    JobList,
    Health,
    Readiness,
    Overview,
    Breakdown,
    Timeseries,
    Realtime,
    PropertyKeys,
    Retention,
    Journeys,
    FunnelReport,
    ErasureRequest,
    ErasureQueued,
    ErasureAnswer,
    IngestLedger,
    FunnelDefinition,
    FunnelCreated,
    FunnelList,
]
_, COMPONENTS = msgspec.json.schema_components(STRUCTS, ref_template="#/components/schemas/{name}")
# msgspec describes Raw as "any"; the endpoint requires an object.
COMPONENTS["TrackingEvent"]["properties"]["properties"] = {"type": "object"}


def ref(struct: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{struct.__name__}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref(ErrorAnswer), description)


def _query(name: str, schema: dict[str, Any], description: str, required: bool = True) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
DENIED = {"401": _error("no valid token"), "403": _error("not an ADMIN")}
RANGE = [
    _query(
        name,
        {"type": "string"},
        "ISO 8601 time; without an offset it is read in REPORT_TIMEZONE (taken to the hour)",
    )
    for name in ("from", "to")
]
FILTER = _query(
    "filter",
    {"type": "string"},
    "`dimension:value` pairs joined by `;`, e.g. `country:GB;device:mobile` or"
    " `prop:filter:oak;country:GB`; dimensions: " + ", ".join(DIMENSIONS) + ", prop:KEY",
    required=False,
)
EVENT_TYPE = _query(
    "eventType",
    {"type": "string", "enum": list(EVENT_TYPES)},
    "only events of this type",
    required=False,
)
DIMENSION = {
    "anyOf": [
        {"type": "string", "enum": list(DIMENSIONS)},
        {"type": "string", "pattern": "^prop:.+", "maxLength": 5 + MAX_KEY_CHARS},
    ]
}
FUNNEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
TRACK_BODY = {
    "oneOf": [
        ref(TrackingEvent),
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EVENTS_PER_REQUEST,
            "items": ref(TrackingEvent),
        },
    ]
}


def _stats(summary: str, answer: type, parameters: list[Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["stats"],
            "security": ADMIN,
            "parameters": parameters,
            "responses": {
                "200": _json(ref(answer), summary),
                "400": _error("a bad parameter, named in `parameter`"),
                **DENIED,
                "503": _error("ClickHouse did not answer"),
            },
        }
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Lomash Wood analytics",
        "version": "1.0.0",
        "description": "Tracking beacons in; dashboards, web analytics, funnels and report"
        " exports out. ADMIN endpoints take `Authorization: Bearer <JWT with role ADMIN>`.",
    },
    "components": {
        "schemas": COMPONENTS,
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
    "paths": {
        "/v1/analytics/track": {
            "post": {
                "summary": "Track one event or an array of up to 100",
                "tags": ["tracking"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": TRACK_BODY},
                        "text/plain": {"schema": TRACK_BODY},
                    },
                },
                "responses": {
                    "202": _json(
                        {"oneOf": [ref(Accepted), ref(AcceptedMany)]},
                        "accepted: one event's id, or an array's count, ids and rejected items",
                    ),
                    "400": _error("invalid; `path` names the field"),
                    "413": _error("body over 64 KiB or more than 100 events"),
                    "415": _error("not application/json or text/plain"),
                    "429": _error("rate limited; see Retry-After"),
                    "503": _error(
                        "the events could not be made durable, or too many wait to be stored"
                        " (see Retry-After)"
                    ),
                },
            }
        },
        "/v1/analytics/tracker.js": {
            "get": {
                "summary": "The tracker script",
                "tags": ["tracking"],
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
                "tags": ["dashboard"],
                "security": ADMIN,
                "parameters": RANGE,
                "responses": {
                    "200": _json(ref(DashboardAnswer), "widgets (stale: from a snapshot)"),
                    "400": _error("bad range"),
                    **DENIED,
                    "503": _error("no data and no snapshot"),
                },
            }
        },
        "/v1/analytics/stats/overview": _stats(
            "Overview of a range: visitors, sessions, pageviews, bounce rate, visit duration,"
            " and the same for the period of equal length just before",
            Overview,
            [*RANGE, FILTER],
        ),
        "/v1/analytics/stats/breakdown": _stats(
            "Breakdown by one dimension, sorted by visitors",
            Breakdown,
            [
                _query(
                    "dimension",
                    DIMENSION,
                    "what to count by: a dimension, or `prop:KEY` for the values of an event"
                    " property (rows then carry `events`)",
                ),
                *RANGE,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_BREAKDOWN_LIMIT},
                    "rows (10 by default)",
                    required=False,
                ),
                FILTER,
                {**EVENT_TYPE, "description": "with `prop:KEY`: only events of this type"},
            ],
        ),
        "/v1/analytics/stats/properties": _stats(
            "The event property keys seen in a range, by the number of events carrying each",
            PropertyKeys,
            [
                *RANGE,
                EVENT_TYPE,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_KEYS},
                    "keys (100 by default)",
                    required=False,
                ),
            ],
        ),
        "/v1/analytics/stats/retention": _stats(
            "Weekly cohorts (weeks from Monday in REPORT_TIMEZONE) by first visit in the range"
            " or first order ever, with the members seen again in each later week",
            Retention,
            [
                _query(
                    "by",
                    {"type": "string", "enum": [b.value for b in CohortBy]},
                    "`visit`: visitors by their first visit in the range; `order`: customers"
                    " by their first order-created, ordering again",
                ),
                *RANGE,
                _query(
                    "weeks",
                    {"type": "integer", "minimum": 1, "maximum": retention.MAX_WEEKS},
                    f"later weeks per cohort ({retention.DEFAULT_WEEKS} by default; only those"
                    " that start before `to`)",
                    required=False,
                ),
            ],
        ),
        "/v1/analytics/stats/journeys": _stats(
            "The most common page sequences after an entry page or before a goal event, with"
            " visitors per sequence (give `entry` or `goal`)",
            Journeys,
            [
                *RANGE,
                _query(
                    "entry",
                    {"type": "string", "pattern": "^/", "maxLength": journeys.MAX_PATH_CHARS},
                    "the next pages of sessions entering at this path",
                    required=False,
                ),
                _query(
                    "goal",
                    {"type": "string", "enum": GOALS},
                    "the pages before a session's first event of this type",
                    required=False,
                ),
                _query(
                    "steps",
                    {"type": "integer", "minimum": 1, "maximum": journeys.MAX_STEPS},
                    f"pages per sequence ({journeys.DEFAULT_STEPS} by default)",
                    required=False,
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": journeys.MAX_LIMIT},
                    f"sequences ({journeys.DEFAULT_LIMIT} by default)",
                    required=False,
                ),
            ],
        ),
        "/v1/analytics/stats/timeseries": _stats(
            "Visitors and pageviews per hour or per day (days cut in REPORT_TIMEZONE), every"
            " bucket present",
            Timeseries,
            [
                _query("interval", {"type": "string", "enum": ["hour", "day"]}, "bucket size"),
                *RANGE,
                FILTER,
            ],
        ),
        "/v1/analytics/stats/realtime": _stats(
            "Visitors in the last 5 minutes and pageviews per minute over the last 30",
            Realtime,
            [],
        ),
        "/v1/analytics/funnels": {
            "get": {
                "summary": "Every funnel: the built-ins and the defined ones",
                "tags": ["funnels"],
                "security": ADMIN,
                "responses": {
                    "200": _json(ref(FunnelList), "the funnels"),
                    **DENIED,
                    "503": _error("ClickHouse did not answer"),
                },
            },
            "post": {
                "summary": "Define a funnel: 2 to 8 steps and a conversion window",
                "tags": ["funnels"],
                "security": ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(FunnelDefinition)}},
                },
                "responses": {
                    "201": _json(ref(FunnelCreated), "defined"),
                    "400": _error("invalid; `path` names the field"),
                    **DENIED,
                    "409": _error("the name is taken, or a built-in's"),
                    "503": _error("ClickHouse did not answer"),
                },
            },
        },
        "/v1/analytics/funnels/{name}": {
            "get": {
                "summary": "A funnel computed for a range now, with per-step drop-off and median"
                " time from the step before; past FUNNEL_SAMPLE_ROWS estimated from a sample of"
                " visitors (sampleShare, each step's margin) unless exact=true",
                "tags": ["funnels"],
                "security": ADMIN,
                "parameters": [
                    FUNNEL_NAME,
                    *RANGE,
                    _query(
                        "exact",
                        {"type": "string", "enum": ["true", "false"], "default": "false"},
                        "true: count every visitor even past the sampling threshold",
                        required=False,
                    ),
                ],
                "responses": {
                    "200": _json(ref(FunnelReport), "the funnel's steps"),
                    "400": _error("bad range or `exact`"),
                    **DENIED,
                    "404": _error("unknown funnel"),
                    "503": _error("ClickHouse did not answer"),
                },
            },
            "delete": {
                "summary": "Remove a defined funnel",
                "tags": ["funnels"],
                "security": ADMIN,
                "parameters": [FUNNEL_NAME],
                "responses": {
                    "204": {"description": "removed"},
                    **DENIED,
                    "404": _error("no such funnel"),
                    "409": _error("a built-in funnel stays"),
                    "503": _error("ClickHouse did not answer"),
                },
            },
        },
        "/v1/analytics/ingest": {
            "get": {
                "summary": "The ledger of accepted tracking events per UTC hour (accepted ="
                " stored + filtered + lost + pending) and the lags from 202 to queryable and"
                " to announced on event.tracked",
                "tags": ["operations"],
                "security": ADMIN,
                "parameters": RANGE,
                "responses": {
                    "200": _json(ref(IngestLedger), "the ledger"),
                    "400": _error("a bad range, named in `parameter`"),
                    **DENIED,
                    "503": _error("ClickHouse did not answer"),
                },
            }
        },
        "/v1/analytics/erasures": {
            "post": {
                "summary": "Erase a user's data everywhere it is kept (UK GDPR Art. 17): their"
                " rows, their sessions', their domain events, rollups, archived days, Redis",
                "tags": ["privacy"],
                "security": ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ErasureRequest)}},
                },
                "responses": {
                    "202": _json(ref(ErasureQueued), "queued (or the user's unfinished one)"),
                    "400": _error("invalid; `path` names the field"),
                    **DENIED,
                    "503": _error("ClickHouse or the job queue did not answer, or no audit key"),
                },
            }
        },
        "/v1/analytics/erasures/{erasureId}": {
            "get": {
                "summary": "An erasure's state and what it removed, per table",
                "tags": ["privacy"],
                "security": ADMIN,
                "parameters": [
                    {
                        "name": "erasureId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": _json(ref(ErasureAnswer), "the erasure"),
                    "400": _error("not an erasure id"),
                    **DENIED,
                    "404": _error("no such erasure"),
                    "503": _error("ClickHouse or the job queue did not answer"),
                },
            }
        },
        "/v1/analytics/exports": {
            "post": {
                "summary": "Queue a report export",
                "tags": ["exports"],
                "operationId": "createExport",
                "security": ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ExportRequest)}},
                },
                "responses": {
                    "202": _json(ref(ExportQueued), "queued"),
                    "400": _error("invalid; `path` names the field"),
                    **DENIED,
                    "403": _error(
                        "not an ADMIN, or the token's `sub` is not the admin's user id (a uuid)"
                    ),
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/v1/analytics/exports/{exportId}": {
            "get": {
                "summary": "An export's state and, when ready, its download link",
                "tags": ["exports"],
                "operationId": "getExport",
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
                    "200": _json(ref(ExportAnswer), "state"),
                    **DENIED,
                    "404": _error("unknown export"),
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/v1/analytics/downloads/exports/{file}": {
            "get": {
                "summary": "A file-storage export, behind a signed, expiring link",
                "description": "The `downloadUrl` of a READY export (file storage): its last"
                " path segment is `file`, its query the `expires` and `signature` to send back.",
                "tags": ["exports"],
                "operationId": "downloadExport",
                "parameters": [
                    {
                        "name": "file",
                        "in": "path",
                        "required": True,
                        "description": "`<exportId>.<csv|json|ndjson>`",
                        "schema": {"type": "string", "pattern": r"^[^/]+\.(csv|json|ndjson)$"},
                    },
                    _query("expires", {"type": "string"}, "unix time the link expires"),
                    _query("signature", {"type": "string"}, "the link's HMAC"),
                ],
                "responses": {
                    "200": {"description": "the file"},
                    "403": _error("link invalid or expired"),
                    "404": _error("no such file"),
                },
            }
        },
        "/v1/admin/jobs": {
            "get": {
                "summary": "Recent runs of the background jobs: queued, running and finished"
                " (finished ones for a day), newest first",
                "tags": ["jobs"],
                "operationId": "listJobs",
                "security": ADMIN,
                "parameters": [
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": runs.MAX_LIMIT},
                        f"runs ({runs.DEFAULT_LIMIT} by default)",
                        required=False,
                    ),
                    _query(
                        "name",
                        {"type": "string", "enum": list(BY_COMMAND)},
                        "only the runs of this job",
                        required=False,
                    ),
                ],
                "responses": {
                    "200": _json(ref(JobList), "the runs"),
                    "400": _error("a bad parameter, named in `parameter`"),
                    **DENIED,
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/v1/admin/jobs/{name}": {
            "post": {
                "summary": "Run a job now (any `analytics jobs run` takes, but export: below)",
                "tags": ["jobs"],
                "operationId": "runJob",
                "security": ADMIN,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(WITHOUT_ARGUMENTS)},
                    }
                ],
                "responses": {
                    "202": _json(ref(JobQueued), "queued"),
                    "400": _error("a body was sent: these jobs take none"),
                    **DENIED,
                    "404": _error("no such job; the error names the known ones"),
                    "409": _error("not enqueued"),
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/v1/admin/jobs/export": {
            "post": {
                "summary": "Run a report export: what POST /v1/analytics/exports does",
                "tags": ["jobs"],
                "operationId": "runExportJob",
                "security": ADMIN,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ExportRequest)}},
                },
                "responses": {
                    "202": _json(ref(JobQueued), "queued, with the export's id"),
                    "400": _error("invalid; `path` names the field"),
                    **DENIED,
                    "403": _error(
                        "not an ADMIN, or the token's `sub` is not the admin's user id (a uuid)"
                    ),
                    "503": _error("job queue unavailable"),
                },
            }
        },
        "/admin": {
            "get": {
                "summary": "The built-in dashboard page (asks for an ADMIN token)",
                "tags": ["pages"],
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "tags": ["operations"],
                "responses": {"200": _json(ref(Health), "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness of ClickHouse, Redis and RabbitMQ",
                "tags": ["operations"],
                "responses": {
                    "200": _json(ref(Readiness), "ready"),
                    "503": _json(ref(Readiness), "a dependency is down"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("METRICS_TOKEN is set and the bearer token is not it"),
                },
            }
        },
    },
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lomash Wood analytics API</title></head>
<body>
<noscript>The OpenAPI 3.1 document: <a href="/docs/openapi.json">/docs/openapi.json</a>.</noscript>
<redoc spec-url="/docs/openapi.json" hide-download-button="false"></redoc>
<script src="/assets/vendor/redoc-2.5.0/redoc.standalone.js"></script>
</body></html>"""


@bp.get("/docs/openapi.json")
async def openapi_json(request: Request) -> HTTPResponse:
    return json(DOCUMENT)


# The page loads nothing from elsewhere: Redoc's bundle asks for its logo from cdn.redoc.ly,
# which this policy refuses before any request leaves (Redoc then hides the image).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


@bp.get("/docs")
async def docs(request: Request) -> HTTPResponse:
    return html(PAGE, headers=PAGE_HEADERS)
