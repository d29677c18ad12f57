"""`analytics jobs`: recent runs and queued jobs, and enqueueing a job by name (workers/runs.py,
as the admin API does)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from core.jobs import BY_COMMAND, Job, erasure_job_id, unknown_job
from core.runtime import redis_client
from core.settings import MIN_SECRET_BYTES, Settings
from materialized.export_state import ExportState, ExportStatus
from workers.runs import enqueue, enqueue_export, recent_runs


def list_jobs(settings: Settings, limit: int = 20) -> str:
    async def run() -> str:
        pool = redis_client(settings.redis_url)
        try:
            runs = await recent_runs(pool, limit)
        finally:
            await pool.aclose()
        lines = [f"recent runs (queued, running and finished; newest first, up to {limit}):"]
        for r in runs:
            took = (
                f"{(r.finished_at - r.started_at).total_seconds():7.2f}s"
                if r.finished_at is not None and r.started_at is not None
                else " " * 8
            )
            result = "" if r.result is None else str(r.result)[:80]
            lines.append(
                f"  {r.enqueued_at:%Y-%m-%d %H:%M:%S} {r.name:<19} {r.status:<7} {took}"
                f"  {result}  (job {r.job_id})"
            )
        return "\n".join(lines)

    return asyncio.run(run())


def run_job(
    settings: Settings,
    name: str,
    report: str,
    fmt: str,
    start: str,
    end: str,
    requested_by: uuid.UUID | None = None,
) -> str:
    if name not in BY_COMMAND:
        raise SystemExit(unknown_job(name))

    async def run() -> str:
        pool = redis_client(settings.redis_url)
        try:
            if BY_COMMAND[name] is not Job.EXPORT_REPORT:
                return f"enqueued {name}: job {await enqueue(pool, name) or '?'}"
            if not (report and fmt and start and end):
                raise SystemExit("export needs --report, --format, --from and --to")
            if requested_by is None:
                raise SystemExit(
                    "export needs --requested-by: the admin's user id (a uuid), whom"
                    " report-generated names and notification-service emails"
                )
            state = ExportState(
                status=ExportStatus.QUEUED,
                report_type=report,
                format=fmt,
                start=datetime.fromisoformat(start).astimezone(UTC),
                end=datetime.fromisoformat(end).astimezone(UTC),
                requested_by=str(requested_by),
                created_at=datetime.now(UTC),
            )
            queued = await enqueue_export(pool, state)
            return f"enqueued export {queued.export_id}"
        finally:
            await pool.aclose()

    return asyncio.run(run())


def erase(settings: Settings, user: uuid.UUID, requested_by: str) -> str:
    """Queue the erasure of a user's data; the worker records and runs it (ClickHouse is not
    opened here: the embedded one belongs to `serve`)."""
    if len(settings.erasure_audit_key.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(
            "bad setting ERASURE_AUDIT_KEY: erasures are audited under this HMAC key; set at"
            f" least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`)"
        )
    erasure_id = str(uuid.uuid4())

    async def run() -> None:
        pool = redis_client(settings.redis_url)
        try:
            await pool.enqueue_job(
                Job.ERASE_USER,
                erasure_id,
                str(user),
                requested_by,
                _job_id=erasure_job_id(erasure_id),
            )
        finally:
            await pool.aclose()

    asyncio.run(run())
    return f"erasure {erasure_id} queued: GET /v1/analytics/erasures/{erasure_id}"
