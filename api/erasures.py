"""Erasures (ADMIN): `POST /v1/analytics/erasures {userId}` queues the erasure of a user's
data (materialized/erasure.py) and answers `202 {erasureId}`; `GET
/v1/analytics/erasures/{id}` says how far it got and what it removed. Asking again for a user
whose erasure is still queued or running answers that erasure (and queues it again, in case
its job was lost)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.exceptions import RedisError
from sanic import Blueprint, HTTPResponse, Request, json

from api.answer import answer, decoded_body
from api.auth import admin_only
from api.services import services
from core.clickhouse import WarehouseError
from core.jobs import Job, erasure_job_id
from core.settings import MIN_SECRET_BYTES
from materialized.erasure import ErasureStatus, ErasureStore, Record, answer_of, user_hash

bp = Blueprint("erasures")


class ErasureRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    user_id: uuid.UUID


class ErasureQueued(msgspec.Struct, rename="camel"):
    erasure_id: str


_decode = msgspec.json.Decoder(ErasureRequest).decode


def _unavailable(what: str, error: Exception) -> HTTPResponse:
    return json({"error": f"{what} unavailable: {error}"}, status=503)


@bp.post("/v1/analytics/erasures")
@admin_only
async def request_erasure(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    asked = decoded_body(_decode, request.body)
    if isinstance(asked, HTTPResponse):
        return asked
    svc = services(request)
    key = svc.runtime.settings.erasure_audit_key.encode()
    if len(key) < MIN_SECRET_BYTES:
        return json(
            {"error": "erasures need ERASURE_AUDIT_KEY (the audit's HMAC key) to be set"},
            status=503,
        )
    store = ErasureStore(svc.runtime.warehouse)
    hashed = user_hash(key, asked.user_id)
    try:
        record = await store.unfinished(hashed)
        if record is None:
            record = Record(
                erasure_id=uuid.uuid4(),
                user_hash=hashed,
                requested_by=str(claims.get("sub", "")),
                requested_at=datetime.now(UTC),
            )
            await store.save(record)
    except WarehouseError as error:
        return _unavailable("ClickHouse", error)
    erasure_id = str(record.erasure_id)
    try:
        # arq refuses an id it already holds: then the erasure's job is queued already.
        await svc.runtime.redis.enqueue_job(
            Job.ERASE_USER,
            erasure_id,
            str(asked.user_id),
            record.requested_by,
            _job_id=erasure_job_id(erasure_id),
        )
    except RedisError as error:
        # Recorded as queued: asking again queues it.
        return _unavailable("the job queue", error)
    return answer(ErasureQueued(erasure_id), status=202)


@bp.get("/v1/analytics/erasures/<erasure_id:str>")
@admin_only
async def erasure_state(request: Request, claims: dict[str, Any], erasure_id: str) -> HTTPResponse:
    try:
        wanted = uuid.UUID(erasure_id)
    except ValueError:
        return json({"error": f"{erasure_id!r} is not an erasure id (a UUID)"}, status=400)
    svc = services(request)
    try:
        record = await ErasureStore(svc.runtime.warehouse).get(wanted)
    except WarehouseError as error:
        return _unavailable("ClickHouse", error)
    if record is None:
        # `analytics erase` queues the job; its record is written when the job starts. A job
        # queued without delay is scored by its enqueue time.
        try:
            queued = await svc.runtime.redis.zscore(
                svc.runtime.redis.default_queue_name, erasure_job_id(str(wanted))
            )
        except RedisError as error:
            return _unavailable("the job queue", error)
        if queued is None:
            return json({"error": f"no erasure {erasure_id}"}, status=404)
        return answer(
            answer_of(
                Record(
                    erasure_id=wanted,
                    user_hash="",
                    requested_by="",
                    requested_at=datetime.fromtimestamp(queued / 1000, UTC),
                    status=ErasureStatus.QUEUED,
                )
            )
        )
    return answer(answer_of(record))
