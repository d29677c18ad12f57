"""`analytics jobs`: recent runs and queued jobs, and enqueueing a job by name."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from core.ids import new_event_id
from core.jobs import BY_COMMAND, Job, erasure_job_id, export_job_id
from core.runtime import redis_client
from core.settings import MIN_SECRET_BYTES, Settings
from materialized import export_state
from materialized.export_state import ExportState, ExportStatus


def list_jobs(settings: Settings, limit: int = 20) -> str:
    async def run() -> str:
        pool = redis_client(settings.redis_url)
        try:
            results = sorted(
                await pool.all_job_results(), key=lambda r: r.finish_time, reverse=True
            )[:limit]
            queued = await pool.queued_jobs()
        finally:
            await pool.aclose()
        lines = [f"queued: {len(queued)}"]
        lines += [
            f"  {job.function} (job {job.job_id}) at {job.enqueue_time:%Y-%m-%d %H:%M:%S}"
            for job in queued
        ]
        lines.append(f"recent runs (newest first, up to {limit}):")
        for r in results:
            took = (r.finish_time - r.start_time).total_seconds()
            outcome = "ok    " if r.success else "FAILED"
            lines.append(
                f"  {r.finish_time:%Y-%m-%d %H:%M:%S} {r.function:<26} {outcome} {took:7.2f}s"
                f"  {str(r.result)[:80]}"
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
        raise SystemExit(f"unknown job {name!r}; one of: {', '.join(BY_COMMAND)}")

    async def run() -> str:
        pool = redis_client(settings.redis_url)
        try:
            if BY_COMMAND[name] is not Job.EXPORT_REPORT:
                job = await pool.enqueue_job(BY_COMMAND[name])
                return f"enqueued {name}: job {job.job_id if job else '?'}"
            if not (report and fmt and start and end):
                raise SystemExit("export needs --report, --format, --from and --to")
            if requested_by is None:
                raise SystemExit(
                    "export needs --requested-by: the admin's user id (a uuid), whom"
                    " report-generated names and notification-service emails"
                )
            export_id = str(new_event_id())
            state = ExportState(
                status=ExportStatus.QUEUED,
                report_type=report,
                format=fmt,
                start=datetime.fromisoformat(start).astimezone(UTC),
                end=datetime.fromisoformat(end).astimezone(UTC),
                requested_by=str(requested_by),
                created_at=datetime.now(UTC),
            )
            await export_state.save(pool, export_id, state)
            await pool.enqueue_job(Job.EXPORT_REPORT, export_id, _job_id=export_job_id(export_id))
            return f"enqueued export {export_id}"
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
