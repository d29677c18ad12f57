"""The background jobs from the admin API (ADMIN), by the names `analytics jobs run NAME` takes:
`POST /v1/admin/jobs/{name}` enqueues one now and answers its id; `export` takes the body of
`POST /v1/analytics/exports` and does what it does. `GET /v1/admin/jobs` lists the recent
runs: queued, running and finished (workers/runs.py reads them from arq's keys)."""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import RedisError
from sanic import Blueprint, HTTPResponse, Request, json

from api.answer import answer
from api.auth import admin_only
from api.exports import queue_export, queue_unavailable
from api.services import services
from api.stats import BadParameter, bad_parameter, choice, whole_number
from core.jobs import BY_COMMAND, Job, unknown_job
from workers.runs import DEFAULT_LIMIT, MAX_LIMIT, JobList, enqueue, recent_runs

bp = Blueprint("admin_jobs")


class JobQueued(msgspec.Struct, rename="camel", omit_defaults=True):
    job_id: str
    export_id: str | None = None  # an export's: its state at GET /v1/analytics/exports/{id}


@bp.post("/v1/admin/jobs/<name:str>")
@admin_only
async def run_job(request: Request, name: str, claims: dict[str, Any]) -> HTTPResponse:
    if name not in BY_COMMAND:
        return json({"error": unknown_job(name)}, status=404)
    if BY_COMMAND[name] is Job.EXPORT_REPORT:
        queued = await queue_export(request, claims)
        if isinstance(queued, HTTPResponse):
            return queued
        return answer(JobQueued(queued.job_id, export_id=queued.export_id), status=202)
    if request.body:
        return json({"error": f"{name} takes no body", "path": "$"}, status=400)
    try:
        job_id = await enqueue(services(request).runtime.redis, name)
    except (RedisError, OSError) as error:
        return queue_unavailable(error)
    if job_id is None:  # arq refuses a duplicate id; ours are random, so this is not expected
        return json({"error": "job not enqueued"}, status=409)
    return answer(JobQueued(job_id), status=202)


@bp.get("/v1/admin/jobs")
@admin_only
async def list_jobs(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    try:
        limit = whole_number(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        name = choice(request, "name", list(BY_COMMAND)) if "name" in request.args else None
    except BadParameter as error:
        return bad_parameter(error)
    try:
        runs = await recent_runs(services(request).runtime.redis, limit, name)
    except (RedisError, OSError) as error:
        return queue_unavailable(error)
    return answer(JobList(runs))
