"""The jobs from the admin API: `POST /v1/admin/jobs/{name}` enqueues what `analytics jobs run
NAME` does (read back from arq's queue in Redis), `export` as `POST /v1/analytics/exports`
does, and `GET /v1/admin/jobs` lists queued, running, done and failed runs as arq left them."""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, get_kwargs

from core.clickhouse import Warehouse
from core.jobs import BY_COMMAND, COMMAND_OF, WITHOUT_ARGUMENTS, Job, export_job_id
from core.settings import Settings
from materialized import export_state
from materialized.export_state import ExportStatus
from tests.conftest import DOWNLOAD_KEY, TEST_REDIS_URL, PrivateRedis, Running
from tests.test_dashboard_api import ADMIN_ID, bearer, token
from tests.test_exports import request_body
from workers.context import JobContext
from workers.runs import MAX_RESULT_CHARS, command_of, json_safe
from workers.settings import (
    CRON_JOBS,
    FUNCTIONS,
    IN_PROGRESS_SECONDS,
    JOB_TIMEOUT_SECONDS,
    KEEP_RESULT_SECONDS,
    worker_settings,
)

JOBS = "/v1/admin/jobs"


@pytest.fixture
async def quiet(server: Running, redis: ArqRedis) -> Running:
    """The server with its embedded worker stopped, and arq's keys cleared of what its crons
    left: what a test enqueues stays in the queue until the test runs it."""
    worker = server.services.worker
    assert worker is not None
    await worker.close()
    leftovers = [key async for key in redis.scan_iter(match="arq:*")]
    if leftovers:
        await redis.delete(*leftovers)
    return server


async def queued(redis: ArqRedis) -> dict[str, tuple[str, tuple[Any, ...]]]:
    return {job.job_id or "": (job.function, job.args) for job in await redis.queued_jobs()}


async def test_each_name_enqueues_its_arq_function(quiet: Running, redis: ArqRedis) -> None:
    expected = {}
    for name in WITHOUT_ARGUMENTS:
        answer = await quiet.http.post(f"{JOBS}/{name}", headers=bearer(token()))
        assert answer.status_code == 202, answer.text
        assert set(answer.json()) == {"jobId"}
        expected[answer.json()["jobId"]] = (BY_COMMAND[name].value, ())
    assert await queued(redis) == expected
    # Every job but the two that take arguments and have their own endpoints.
    assert {function for function, _ in expected.values()} == {
        job.value for job in Job if job not in (Job.EXPORT_REPORT, Job.ERASE_USER)
    }


async def test_export_takes_the_exports_body_and_queues_it_as_that_does(
    quiet: Running, redis: ArqRedis
) -> None:
    body = request_body("REVENUE", "JSON")
    answer = await quiet.http.post(f"{JOBS}/export", json=body, headers=bearer(token()))
    assert answer.status_code == 202, answer.text
    export_id = answer.json()["exportId"]
    assert answer.json() == {"jobId": export_job_id(export_id), "exportId": export_id}
    job = (Job.EXPORT_REPORT.value, (export_id,))
    assert await queued(redis) == {export_job_id(export_id): job}
    state = await export_state.load(redis, export_id)
    assert state is not None
    assert (state.status, state.report_type, state.format) == (
        ExportStatus.QUEUED,
        "REVENUE",
        "JSON",
    )
    assert state.requested_by == ADMIN_ID
    assert state.start == datetime.fromisoformat(body["dateRange"]["from"])
    shown = await quiet.http.get(f"/v1/analytics/exports/{export_id}", headers=bearer(token()))
    assert shown.json()["status"] == "QUEUED" and shown.json()["reportType"] == "REVENUE"


@pytest.mark.parametrize(
    ("body", "status", "path", "says"),
    [
        ({**request_body(), "reportType": "SALES"}, 400, "$.reportType", "Invalid enum value"),
        ({"reportType": "ORDERS", "format": "CSV"}, 400, "$", "dateRange"),
        ({**request_body(), "colour": "red"}, 400, "$", "unknown field `colour`"),
        (
            {
                **request_body(),
                "dateRange": {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            },
            400,
            "$.dateRange.to",
            "after",
        ),
        (None, 400, "$", "malformed JSON"),
    ],
    ids=["bad-report", "no-range", "unknown-field", "backwards", "no-body"],
)
async def test_a_bad_export_body_is_refused_naming_the_field_and_nothing_is_queued(
    quiet: Running, redis: ArqRedis, body: Any, status: int, path: str, says: str
) -> None:
    answer = await quiet.http.post(f"{JOBS}/export", json=body, headers=bearer(token()))
    assert answer.status_code == status
    assert answer.json()["path"] == path
    assert says in answer.json()["error"]
    assert await queued(redis) == {}


async def test_an_export_needs_the_admin_named_by_user_id(quiet: Running, redis: ArqRedis) -> None:
    answer = await quiet.http.post(
        f"{JOBS}/export", json=request_body(), headers=bearer(token(sub="analytics-cli"))
    )
    assert answer.status_code == 403 and answer.json()["path"] == "sub"
    assert await queued(redis) == {}


async def test_unknown_names_bodies_and_callers_are_refused(
    quiet: Running, redis: ArqRedis
) -> None:
    unknown = await quiet.http.post(f"{JOBS}/reticulate", headers=bearer(token()))
    assert unknown.status_code == 404
    assert "reticulate" in unknown.json()["error"]
    assert all(name in unknown.json()["error"] for name in BY_COMMAND)
    with_body = await quiet.http.post(f"{JOBS}/purge", json={"days": 3}, headers=bearer(token()))
    assert with_body.status_code == 400 and with_body.json()["path"] == "$"
    for method, path in (("POST", f"{JOBS}/rebuild-dashboards"), ("GET", JOBS)):
        anonymous = await quiet.http.request(method, path)
        assert anonymous.status_code == 401, path
        other = await quiet.http.request(method, path, headers=bearer(token("USER")))
        assert other.status_code == 403, path
        assert "ADMIN" in other.json()["error"]
    # Refused before the name is looked at: no probing for names without a token.
    assert (await quiet.http.post(f"{JOBS}/reticulate")).status_code == 401
    assert await queued(redis) == {}


async def test_redis_down_is_503(
    make_server: Callable[[Settings], Any], settings: Settings, private_redis: PrivateRedis
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(settings, redis_url=private_redis.url)
    )
    private_redis.kill()
    admin = bearer(token())
    for answer in (
        await server.http.post(f"{JOBS}/rebuild-dashboards", headers=admin),
        await server.http.post(f"{JOBS}/export", json=request_body(), headers=admin),
        await server.http.get(JOBS, headers=admin),
    ):
        assert answer.status_code == 503, answer.text
        assert "job queue unavailable" in answer.json()["error"]
        assert answer.headers["retry-after"] == "5"


def moment(value: str | None) -> datetime:
    assert value is not None
    return datetime.fromisoformat(value)


async def test_the_listing_shows_queued_running_done_and_failed_runs(
    quiet: Running, redis: ArqRedis, settings: Settings, warehouse: Warehouse
) -> None:
    admin = bearer(token())

    async def run(name: str) -> str:
        answer = await quiet.http.post(f"{JOBS}/{name}", headers=admin)
        assert answer.status_code == 202
        await asyncio.sleep(0.01)  # enqueue times are milliseconds: one apart
        job_id: str = answer.json()["jobId"]
        return job_id

    done, failed = await run("rebuild-dashboards"), await run("remove-old-exports")
    # A worker as `serve` runs one, on a context without storage: removing exports fails.
    worker = Worker(
        functions=FUNCTIONS,
        redis_pool=ArqRedis.from_url(TEST_REDIS_URL),
        burst=True,
        handle_signals=False,
        poll_delay=0.05,
        keep_result=KEEP_RESULT_SECONDS,
        job_timeout=JOB_TIMEOUT_SECONDS,
        ctx={"job": JobContext(settings=settings, warehouse=warehouse, redis=redis)},
    )
    await worker.async_run()
    await worker.close()
    running = await run("check-freshness")
    await asyncio.sleep(1.0)
    # As a worker marks the run it takes (arq's in-progress key), half a second ago.
    await redis.psetex(in_progress_key_prefix + running, IN_PROGRESS_SECONDS * 1000 - 500, b"1")
    waiting = await run("recompute-funnels")

    answer = await quiet.http.get(JOBS, headers=admin)
    assert answer.status_code == 200, answer.text
    jobs = answer.json()["jobs"]
    assert [j["jobId"] for j in jobs] == [waiting, running, failed, done]  # newest first
    by_id = {j["jobId"]: j for j in jobs}
    assert by_id[done] | {"enqueuedAt": "", "startedAt": "", "finishedAt": ""} == {
        "jobId": done,
        "name": "rebuild-dashboards",
        "enqueuedAt": "",
        "startedAt": "",
        "finishedAt": "",
        "status": "DONE",
        "result": "rebuilt 4 dashboards",
    }
    assert by_id[failed]["name"] == "remove-old-exports"
    assert by_id[failed]["status"] == "FAILED"
    assert by_id[failed]["result"] == (
        "RuntimeError: this job needs the object storage, and its context has none"
    )
    for finished in (by_id[done], by_id[failed]):
        enqueued, started = moment(finished["enqueuedAt"]), moment(finished["startedAt"])
        assert enqueued <= started <= moment(finished["finishedAt"]) <= datetime.now(UTC)
        assert enqueued.tzinfo is not None and enqueued.utcoffset() == timedelta(0)
    assert moment(by_id[done]["finishedAt"]) <= moment(by_id[waiting]["enqueuedAt"])
    assert by_id[waiting] | {"enqueuedAt": ""} == {
        "jobId": waiting,
        "name": "recompute-funnels",
        "enqueuedAt": "",
        "startedAt": None,
        "finishedAt": None,
        "status": "QUEUED",
        "result": None,
    }
    assert by_id[running]["status"] == "RUNNING"
    assert by_id[running]["name"] == "check-freshness"
    assert by_id[running]["finishedAt"] is None and by_id[running]["result"] is None
    ran_for = datetime.now(UTC) - moment(by_id[running]["startedAt"])
    assert timedelta(seconds=0.4) < ran_for < timedelta(seconds=3)
    assert moment(by_id[running]["enqueuedAt"]) <= moment(by_id[running]["startedAt"])

    # Filtered by name server side, and cut to the limit.
    only = await quiet.http.get(JOBS, params={"name": "rebuild-dashboards"}, headers=admin)
    assert [j["jobId"] for j in only.json()["jobs"]] == [done]
    newest = await quiet.http.get(JOBS, params={"limit": "2"}, headers=admin)
    assert [j["jobId"] for j in newest.json()["jobs"]] == [waiting, running]
    none = await quiet.http.get(JOBS, params={"name": "export"}, headers=admin)
    assert none.json() == {"jobs": []}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"name": "reticulate"}, "name"),
        ({"name": "rebuild_dashboards"}, "name"),  # arq's name, not the job's
    ],
)
async def test_a_bad_listing_parameter_is_400_naming_it(
    server: Running, params: dict[str, str], parameter: str
) -> None:
    answer = await server.http.get(JOBS, params=params, headers=bearer(token()))
    assert answer.status_code == 400
    assert answer.json()["parameter"] == parameter
    assert f"`{parameter}`" in answer.json()["error"]


def test_every_job_has_one_name_and_a_crons_runs_are_shown_by_it() -> None:
    assert set(COMMAND_OF) == set(Job)
    # An erasure is queued by its own command and endpoint (its argument is a user id).
    assert {command_of(job.value) for job in Job} == {*BY_COMMAND, "erase"}
    assert command_of("cron:check_dashboard_freshness") == "check-freshness"
    assert command_of("cron:retry_failed_batches") == "retry"
    assert command_of("somebody_elses_job") == "somebody_elses_job"


class Opaque:
    def __str__(self) -> str:
        return "opaque thing"


def test_results_are_made_json_safe_and_cut() -> None:
    assert json_safe("rebuilt 4 dashboards") == "rebuilt 4 dashboards"
    assert json_safe({"rows": 3, "days": ("2026-01-01",)}) == {"rows": 3, "days": ["2026-01-01"]}
    assert json_safe(None) is None and json_safe(7) == 7 and json_safe(float("nan")) is None
    assert json_safe(RuntimeError("storage gone")) == "RuntimeError: storage gone"
    assert json_safe(TimeoutError()) == "TimeoutError"
    assert json_safe(Opaque()) == "opaque thing"
    long = json_safe("x" * 10_000)
    assert len(long) == MAX_RESULT_CHARS and long.endswith("…")
    big = json_safe({"rows": list(range(5_000))})
    assert isinstance(big, str) and len(big) == MAX_RESULT_CHARS
    msgspec.json.encode([json_safe(v) for v in (Opaque(), {1: Opaque()}, b"\xff")])


async def test_both_workers_keep_results_a_day_and_mark_runs_for_the_listings_span(
    monkeypatch: pytest.MonkeyPatch, server: Running
) -> None:
    monkeypatch.setenv("DOWNLOAD_SIGNING_KEY", DOWNLOAD_KEY)
    standalone = Worker(**get_kwargs(worker_settings()), handle_signals=False)  # type: ignore[arg-type]
    embedded = server.services.worker
    assert embedded is not None
    for _ in range(100):  # made when the embedded worker's supervisor first runs it
        if embedded._worker is not None:
            break
        await asyncio.sleep(0.05)
    assert embedded._worker is not None
    for worker in (standalone, embedded._worker):
        assert worker.keep_result_s == KEEP_RESULT_SECONDS == 86_400
        assert worker.in_progress_timeout_s == IN_PROGRESS_SECONDS
    assert {cron.name for cron in CRON_JOBS} <= set(standalone.functions)
