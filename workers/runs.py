"""The jobs by the names people type (core/jobs.py `BY_COMMAND`): enqueueing one, and the
recent runs, for the admin API (api/admin_jobs.py) and `analytics jobs` (cli/jobs.py) alike.

arq keeps no list of runs; a run is read where arq leaves it in Redis:

- queued: in the queue (`arq:queue`, a sorted set) with its definition at `arq:job:<id>`;
- running: still in the queue, with an in-progress key (`arq:in-progress:<id>`); arq writes no
  start time, so it is read from that key's remaining life (set for `IN_PROGRESS_SECONDS` as
  the run starts). A cron run's in-progress key outlives it by 60 s, but by then it has left
  the queue, so it is not taken for running;
- finished: a result (`arq:result:<id>`), kept `KEEP_RESULT_SECONDS` (a day), DONE or FAILED
  with the job's return value or its exception. The retry job keeps none (workers/settings.py),
  so its runs are seen only while queued or running.

Results are found with SCAN (never KEYS, which blocks Redis for its whole keyspace) and read
in pages with MGET: about 220 a day with the crons as they are."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.jobs import DeserializationError, deserialize_job, deserialize_result

from core.ids import new_event_id
from core.jobs import BY_COMMAND, COMMAND_OF, Job, export_job_id
from materialized import export_state
from materialized.export_state import ExportState
from workers.settings import IN_PROGRESS_SECONDS

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_RESULT_CHARS = 2000  # a result longer than this, as text, is cut (with `…`)
_PAGE = 500  # keys per SCAN step and per MGET


class RunStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class JobRun(msgspec.Struct, rename="camel", kw_only=True):
    job_id: str
    name: str  # the CLI's name (`rebuild-dashboards`); arq's function name for a stranger
    enqueued_at: datetime
    started_at: datetime | None  # null while queued
    finished_at: datetime | None  # null until finished
    status: RunStatus
    result: Any  # what the job returned (DONE) or its error as text (FAILED); null before


class JobList(msgspec.Struct):
    jobs: list[JobRun]  # newest first (by enqueuedAt)


def command_of(function: str) -> str:
    """The CLI's name of a run's arq function; a cron's runs are `cron:<function>`."""
    bare = function.removeprefix("cron:")
    try:
        return COMMAND_OF[Job(bare)]
    except ValueError:
        return function


def json_safe(value: Any) -> Any:
    """A job's result as JSON can carry it: an exception as `Type: message`, what msgspec
    cannot encode as its str(), anything too long as text cut to MAX_RESULT_CHARS."""
    if isinstance(value, BaseException):
        text = f"{type(value).__name__}: {value}" if str(value) else type(value).__name__
    elif isinstance(value, str):
        text = value
    else:
        try:
            encoded = msgspec.json.encode(value)
        except (TypeError, ValueError, OverflowError):
            text = _text(value)
        else:
            if len(encoded) <= MAX_RESULT_CHARS:  # as JSON has it: a tuple a list, nan null
                return msgspec.json.decode(encoded)
            text = _text(value)
    return text if len(text) <= MAX_RESULT_CHARS else text[: MAX_RESULT_CHARS - 1] + "…"


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a result whose __str__ fails still says what it is
        return object.__repr__(value)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


async def _queued(redis: ArqRedis, now: datetime) -> list[JobRun]:
    entries = await redis.zrange(default_queue_name, 0, -1, withscores=True)
    if not entries:
        return []
    ids = [job_id.decode() for job_id, _ in entries]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.get(job_key_prefix + job_id)
            pipe.pttl(in_progress_key_prefix + job_id)
        found = await pipe.execute()
    runs = []
    for at, job_id in enumerate(ids):
        raw, left_ms = found[2 * at], found[2 * at + 1]
        if raw is None:  # expired before a worker took it: arq drops it when it does
            continue
        try:
            job = deserialize_job(raw)
        except DeserializationError:
            log.warning("job %s in the queue cannot be read", job_id)
            continue
        enqueued = _utc(job.enqueue_time)
        started = None
        if left_ms > 0:  # a worker runs it; its key was set for IN_PROGRESS_SECONDS
            ran_for = timedelta(seconds=IN_PROGRESS_SECONDS) - timedelta(milliseconds=left_ms)
            started = min(now, max(enqueued, now - ran_for))
        runs.append(
            JobRun(
                job_id=job_id,
                name=command_of(job.function),
                enqueued_at=enqueued,
                started_at=started,
                finished_at=None,
                status=RunStatus.QUEUED if started is None else RunStatus.RUNNING,
                result=None,
            )
        )
    return runs


async def _finished(redis: ArqRedis) -> list[JobRun]:
    keys = [key async for key in redis.scan_iter(match=result_key_prefix + "*", count=_PAGE)]
    runs = []
    for start in range(0, len(keys), _PAGE):
        page = keys[start : start + _PAGE]
        for key, raw in zip(page, await redis.mget(page), strict=True):
            if raw is None:  # expired between the SCAN and the MGET
                continue
            job_id = key.decode().removeprefix(result_key_prefix)
            try:
                done = deserialize_result(raw)
            except DeserializationError:
                log.warning("the result of job %s cannot be read", job_id)
                continue
            runs.append(
                JobRun(
                    job_id=job_id,
                    name=command_of(done.function),
                    enqueued_at=_utc(done.enqueue_time),
                    started_at=_utc(done.start_time),
                    finished_at=_utc(done.finish_time),
                    status=RunStatus.DONE if done.success else RunStatus.FAILED,
                    result=json_safe(done.result),
                )
            )
    return runs


async def recent_runs(
    redis: ArqRedis, limit: int = DEFAULT_LIMIT, name: str | None = None
) -> list[JobRun]:
    """Queued, running and finished runs (of the job `name` only, when given), newest first
    by enqueue time, at most `limit`."""
    queued = await _queued(redis, datetime.now(UTC))
    # A run that finished between the two reads is in both: its result wins.
    by_id = {run.job_id: run for run in [*queued, *await _finished(redis)]}
    runs = [run for run in by_id.values() if name is None or run.name == name]
    runs.sort(key=lambda run: (run.enqueued_at, run.job_id), reverse=True)
    return runs[:limit]


async def enqueue(redis: ArqRedis, name: str) -> str | None:
    """Enqueue the job `name` (one of `WITHOUT_ARGUMENTS`): its job id, or None when arq
    refused it (a job with that id exists; ids are random, so not expected)."""
    job = BY_COMMAND[name]
    if job is Job.EXPORT_REPORT:
        raise ValueError("an export is enqueued with its state: enqueue_export")
    queued = await redis.enqueue_job(job)
    return queued.job_id if queued is not None else None


@dataclass(frozen=True, slots=True)
class QueuedExport:
    export_id: str
    job_id: str


async def enqueue_export(redis: ArqRedis, state: ExportState) -> QueuedExport:
    """Save a new export's state (QUEUED) and enqueue its job, under an id of its own."""
    export_id = str(new_event_id())
    job_id = export_job_id(export_id)
    await export_state.save(redis, export_id, state)
    await redis.enqueue_job(Job.EXPORT_REPORT, export_id, _job_id=job_id)
    return QueuedExport(export_id, job_id)
