"""`POST /v1/analytics/track`: the beacon endpoint.

The handler is a sequence of named steps, as Plausible's ingest is: each step returns what the
next needs, or a `Dropped` with its reason (one of `Drop`), the events it drops and what the
client is told; the status of each reason is decided in one table (`STATUS`). In order: the
body (content type, size), the client address, decoding (each element of an array judged on
its own), the rate limit and the event budget (one Redis check for both), room in the log
(503 while too many rows wait to be stored), enrichment (pure), the append to the tracking log
(durable), and the 202. Everything that needs a round trip per event (duplicates, sessions)
happens per batch in the writer, after the answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, json
from sanic.response import JSONResponse

from core.metrics import EVENTS_ACCEPTED, EVENTS_RECEIVED, RATES, Drop, drop
from ingest import cors
from ingest.client_ip import client_ip, rate_key
from ingest.enrich import Context, enrich, now
from ingest.geo import UNKNOWN
from ingest.parts import IngestParts, ingest_parts
from ingest.ratelimit import Budget, Refusal
from ingest.schema import BodyError, Decoded, Rejection, decode_body
from tracked.row import TrackingRow

bp = Blueprint("track")

MAX_BODY_BYTES = 64 * 1024
_ACCEPTED_TYPES = ("application/json", "text/plain", "")

# The answer to each reason for dropping a request's events, and whether to retry later.
STATUS: dict[Drop, int] = {
    Drop.UNSUPPORTED_TYPE: 415,
    Drop.INVALID: 400,
    Drop.TOO_LARGE: 413,
    Drop.RATE_LIMITED: 429,
    Drop.OVERLOADED: 503,
    Drop.UNWRITABLE: 503,
}


@dataclass(frozen=True, slots=True)
class Dropped:
    """A step's refusal: why, how many events it drops, and what the client is told."""

    reason: Drop
    message: str
    events: int = 1
    path: str = "$"
    retry_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def answer(self) -> JSONResponse:
        drop(self.reason, self.events)
        retry = f"; retry in {self.retry_after}s" if self.retry_after is not None else ""
        body = {"error": self.message + retry, "path": self.path, **self.extra}
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return json(body, status=STATUS[self.reason], headers=headers)


@bp.on_response  # type: ignore[untyped-decorator]
async def add_cors(request: Request, response: HTTPResponse) -> None:
    cors.add_headers(request, response, ingest_parts(request).settings.cors_origins)


@bp.options("/v1/analytics/track")
async def track_preflight(request: Request) -> HTTPResponse:
    return cors.preflight(request, ingest_parts(request).settings.cors_origins)


@bp.post("/v1/analytics/track")
async def track(request: Request) -> HTTPResponse:
    svc = ingest_parts(request)
    body = read_body(request)
    if isinstance(body, Dropped):
        return body.answer()
    client = client_of(svc, request)
    decoded = await decoded_within_budget(svc, body, client)
    if isinstance(decoded, Dropped):
        return decoded.answer()
    room = room_in_the_log(svc, len(decoded.events))
    if room is not None:
        return room.answer()
    rows = enrich([event for _, event in decoded.events], context_of(svc, request, client))
    appended = await appended_to_the_log(svc, rows)
    if appended is not None:
        return appended.answer()
    EVENTS_ACCEPTED.inc(len(rows))
    RATES.record(accepted=len(rows))
    return accepted(decoded, rows)


# The steps, in order.


def read_body(request: Request) -> bytes | Dropped:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # sendBeacon posts text/plain so that the browser skips the CORS preflight.
    if content_type not in _ACCEPTED_TYPES:
        return Dropped(
            Drop.UNSUPPORTED_TYPE,
            f"content type {content_type!r} not accepted; send application/json or text/plain",
        )
    body: bytes = request.body
    if len(body) > MAX_BODY_BYTES:
        return Dropped(Drop.TOO_LARGE, f"body of {len(body)} bytes; at most {MAX_BODY_BYTES}")
    return body


@dataclass(frozen=True, slots=True)
class Client:
    address: str
    rate_key: str


def client_of(svc: IngestParts, request: Request) -> Client:
    address = client_ip(
        request.ip, request.headers.getall("x-forwarded-for", []), svc.trusted_proxies
    )
    return Client(address, rate_key(address))


async def decoded_within_budget(svc: IngestParts, body: bytes, client: Client) -> Decoded | Dropped:
    """The events of the body, if the client's budgets take them; a body that does not decode
    still costs a request, so a flood of bad bodies is limited like any other."""
    try:
        decoded = decode_body(body)
    except BodyError as error:
        refusal = await svc.limiter.check(client.rate_key, events=0)
        if refusal is not None:
            return rate_limited(svc, refusal)
        reason = Drop.TOO_LARGE if error.status == 413 else Drop.INVALID
        return Dropped(reason, str(error), path=error.path)
    # Both budgets in one check: requests per client, then events per client.
    refusal = await svc.limiter.check(client.rate_key, events=len(decoded.events))
    if refusal is not None and refusal.budget is Budget.REQUESTS:
        return rate_limited(svc, refusal)  # refused as a request: counted once, body unread
    sent = len(decoded.events) + len(decoded.rejected)
    EVENTS_RECEIVED.inc(sent)
    if refusal is not None:
        return rate_limited(svc, refusal, sent)
    if decoded.rejected:
        drop(Drop.INVALID, len(decoded.rejected))  # the rest of the array goes on
    if not decoded.events:
        return Dropped(
            Drop.INVALID,
            "no event in the array is valid",
            events=0,  # each was counted above
            extra={"rejected": [msgspec.structs.asdict(r) for r in decoded.rejected]},
        )
    return decoded


def rate_limited(svc: IngestParts, refusal: Refusal, events: int = 1) -> Dropped:
    if refusal.budget is Budget.REQUESTS:
        message = f"rate limit {svc.settings.rate_limit} exceeded"
    else:
        message = f"event budget {svc.settings.rate_limit_events} exceeded"
    return Dropped(Drop.RATE_LIMITED, message, events=events, retry_after=refusal.seconds)


def room_in_the_log(svc: IngestParts, events: int) -> Dropped | None:
    waiting = svc.log.unread_rows
    if waiting < svc.settings.ingest_max_pending_rows:
        return None
    # ClickHouse is not keeping up (or down, and the retry queue with it): refusing is honest,
    # accepting would grow memory without bound.
    return Dropped(
        Drop.OVERLOADED,
        f"ingest is behind: {waiting} events wait to be stored",
        events=events,
        retry_after=1,
    )


def context_of(svc: IngestParts, request: Request, client: Client) -> Context:
    return Context(
        received_at=now(),
        place=svc.geo.locate(client.address) if svc.geo else UNKNOWN,
        header_user_agent=request.headers.get("user-agent", ""),
    )


async def appended_to_the_log(svc: IngestParts, rows: list[TrackingRow]) -> Dropped | None:
    try:
        # On disk before the 202: a crash after this point cannot lose these events.
        await svc.log.append(rows)
    except OSError as error:  # a full or failing disk: nothing of these rows is kept
        problem = f"could not make the events durable ({error.strerror or error})"
        return Dropped(Drop.UNWRITABLE, problem, events=len(rows), retry_after=1)
    return None


def accepted(decoded: Decoded, rows: list[TrackingRow]) -> HTTPResponse:
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
