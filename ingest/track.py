"""`POST /v1/analytics/track`: the beacon endpoint.

The request path, in order: check the content type and size, find the client address, decode
and validate, apply the request rate limit and the event budget (one Redis check for both),
refuse (503) while the log holds too many unplaced rows, enrich each event (pure steps),
append the rows to the tracking log (durable), answer 202. Everything that needs a round trip
per event (duplicates, sessions) happens per batch in the writer, after the answer.
"""

from __future__ import annotations

import uuid

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import JSONResponse

from core.metrics import EVENTS_ACCEPTED, EVENTS_RECEIVED, RATES, Drop, drop
from ingest import cors
from ingest.client_ip import client_ip, rate_key
from ingest.enrich import Context, enrich, now
from ingest.geo import UNKNOWN
from ingest.pipeline import Pipeline, pipeline
from ingest.ratelimit import Budget, Refusal
from ingest.schema import BodyError, Rejection, decode_body

bp = Blueprint("track")

MAX_BODY_BYTES = 64 * 1024
_ACCEPTED_TYPES = ("application/json", "text/plain", "")


def _too_many(message: str, wait: int) -> JSONResponse:
    return json(
        {"error": f"{message}; retry in {wait}s"}, status=429, headers={"Retry-After": str(wait)}
    )


def _refused(svc: Pipeline, refusal: Refusal, events: int = 1) -> JSONResponse:
    """The 429 for a request a budget refused; `events`: how many to count dropped (a request
    refused as a request counts once, as when its body was not read)."""
    drop(Drop.RATE_LIMITED, events)
    if refusal.budget is Budget.REQUESTS:
        return _too_many(f"rate limit {svc.settings.rate_limit} exceeded", refusal.seconds)
    return _too_many(f"event budget {svc.settings.rate_limit_events} exceeded", refusal.seconds)


def _error(status: int, message: str, path: str = "$") -> JSONResponse:
    return json({"error": message, "path": path}, status=status)


@bp.on_response  # type: ignore[untyped-decorator]
async def add_cors(request: Request, response: HTTPResponse) -> None:
    cors.add_headers(request, response, pipeline(request).settings.cors_origins)


@bp.options("/v1/analytics/track")
async def track_preflight(request: Request) -> HTTPResponse:
    return cors.preflight(request, pipeline(request).settings.cors_origins)


@bp.post("/v1/analytics/track")
async def track(request: Request) -> HTTPResponse:
    svc = pipeline(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # sendBeacon posts text/plain so that the browser skips the CORS preflight.
    if content_type not in _ACCEPTED_TYPES:
        drop(Drop.INVALID)
        return _error(
            415,
            f"content type {content_type!r} not accepted; send application/json or text/plain",
        )
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        drop(Drop.TOO_LARGE)
        return _error(413, f"body of {len(body)} bytes; at most {MAX_BODY_BYTES}")

    address = client_ip(
        request.ip, request.headers.getall("x-forwarded-for", []), svc.trusted_proxies
    )
    client = rate_key(address)

    try:
        decoded = decode_body(body)
    except BodyError as error:
        # A bad body still costs a request: a flood of them is limited like any other.
        refusal = await svc.limiter.check(client, events=0)
        if refusal is not None:
            return _refused(svc, refusal)
        drop(Drop.TOO_LARGE if error.status == 413 else Drop.INVALID)
        return _error(error.status, str(error), error.path)
    # Both budgets in one check: requests per client, then events per client.
    refusal = await svc.limiter.check(client, events=len(decoded.events))
    if refusal is not None and refusal.budget is Budget.REQUESTS:
        return _refused(svc, refusal)
    EVENTS_RECEIVED.inc(len(decoded.events) + len(decoded.rejected))
    if refusal is not None:
        return _refused(svc, refusal, len(decoded.events) + len(decoded.rejected))
    if decoded.rejected:
        drop(Drop.INVALID, len(decoded.rejected))
    if not decoded.events:
        rejected = [msgspec.structs.asdict(r) for r in decoded.rejected]
        return json({"error": "no event in the array is valid", "rejected": rejected}, 400)
    waiting = svc.log.unread_rows
    if waiting >= svc.settings.ingest_max_pending_rows:
        # ClickHouse is not keeping up (or down, and the retry queue with it): refusing is
        # honest, accepting would grow memory without bound.
        drop(Drop.OVERLOADED, len(decoded.events))
        return json(
            {"error": f"ingest is behind: {waiting} events wait to be stored; retry in 1s"},
            status=503,
            headers={"Retry-After": "1"},
        )

    ctx = Context(
        received_at=now(),
        place=svc.geo.locate(address) if svc.geo else UNKNOWN,
        header_user_agent=request.headers.get("user-agent", ""),
    )
    rows = enrich([event for _, event in decoded.events], ctx)
    try:
        # On disk before the 202: a crash after this point cannot lose these events.
        await svc.log.append(rows)
    except OSError as error:  # a full or failing disk: nothing of these rows is kept
        drop(Drop.UNWRITABLE, len(rows))
        problem = f"could not make the events durable ({error.strerror or error})"
        return json(
            {"error": f"{problem}; retry in 1s", "path": "$"},
            status=503,
            headers={"Retry-After": "1"},
        )
    EVENTS_ACCEPTED.inc(len(rows))
    RATES.record(accepted=len(rows))

    if not decoded.is_array:
        return _accepted(Accepted(event_id=rows[0].event_id))
    return _accepted(
        AcceptedMany(
            accepted=len(rows), rejected=decoded.rejected, event_ids=[row.event_id for row in rows]
        )
    )


class Accepted(msgspec.Struct, rename="camel"):
    event_id: uuid.UUID


class AcceptedMany(msgspec.Struct, rename="camel"):
    accepted: int
    rejected: list[Rejection]
    event_ids: list[uuid.UUID]


_encoder = msgspec.json.Encoder()
_encode = _encoder.encode


def _accepted(body: Accepted | AcceptedMany) -> HTTPResponse:
    # msgspec writes the UUIDs in C; str() on 100 of them in Python costs more than the rest.
    return HTTPResponse(_encode(body), status=202, content_type="application/json")
