"""The state of a report export, kept in Redis as one typed document (`lw:export:v2:{id}`),
expiring after 8 days (an export's file lives 7). Written by the API (QUEUED), the export job
(RUNNING, then READY or FAILED) and `analytics jobs run export`."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec
from redis.asyncio import Redis

from core.keys import export_key

TTL_S = 8 * 86400


class ExportStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    READY = "READY"
    FAILED = "FAILED"


class ExportState(msgspec.Struct, kw_only=True, rename="camel"):
    status: ExportStatus
    report_type: str
    format: str
    start: datetime
    end: datetime
    created_at: datetime
    requested_by: str = ""  # the token's `sub`, a uuid (api/exports.requester)
    object_key: str = ""  # READY
    expires_at: datetime | None = None  # READY: when the file and its link go
    rows: int = 0  # READY
    error: str = ""  # FAILED: why


_decode = msgspec.json.Decoder(ExportState).decode


async def save(redis: Redis, export_id: str, state: ExportState) -> None:
    await redis.set(export_key(export_id), msgspec.json.encode(state), ex=TTL_S)


async def load(redis: Redis, export_id: str) -> ExportState | None:
    raw: bytes | None = await redis.get(export_key(export_id))
    return None if raw is None else _decode(raw)
