"""`POST /v1/admin/jobs/rebuild-dashboards` (ADMIN): enqueue the job now, answer its id."""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import RedisError
from sanic import Blueprint, HTTPResponse, Request, json

from api.answer import answer
from api.auth import admin_only
from api.services import services
from core.jobs import Job

bp = Blueprint("admin_jobs")


class JobQueued(msgspec.Struct, rename="camel"):
    job_id: str


@bp.post("/v1/admin/jobs/rebuild-dashboards")
@admin_only
async def rebuild_dashboards(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    try:
        job = await services(request).runtime.redis.enqueue_job(Job.REBUILD_DASHBOARDS)
    except RedisError as error:
        return json({"error": f"job queue unavailable: {error}"}, status=503)
    if job is None:  # arq refuses a duplicate id; ours are random, so this is not expected
        return json({"error": "job not enqueued"}, status=409)
    return answer(JobQueued(job.job_id), status=202)
