"""Every background job, by the name arq runs it under (the function's name) and the name
people type (`analytics jobs run NAME`, the admin API). One registry: a job's name is never
written as a string anywhere else."""

from __future__ import annotations

import enum


class Job(enum.StrEnum):
    RETRY_FAILED_BATCHES = "retry_failed_batches"
    RECOMPUTE_FUNNELS = "recompute_funnels"
    REBUILD_DASHBOARDS = "rebuild_dashboards"
    CHECK_DASHBOARD_FRESHNESS = "check_dashboard_freshness"
    EXPORT_REPORT = "export_report"
    REMOVE_OLD_EXPORTS = "remove_old_exports"
    ARCHIVE_HISTORICAL_DATA = "archive_historical_data"
    PURGE_OLD_EVENTS = "purge_old_events"
    SEAL_SESSION_HOURS = "seal_session_hours"
    ERASE_USER = "erase_user"  # `analytics erase USER_ID`, POST /v1/analytics/erasures


# The names of `analytics jobs run NAME`.
BY_COMMAND: dict[str, Job] = {
    "rebuild-dashboards": Job.REBUILD_DASHBOARDS,
    "recompute-funnels": Job.RECOMPUTE_FUNNELS,
    "archive": Job.ARCHIVE_HISTORICAL_DATA,
    "purge": Job.PURGE_OLD_EVENTS,
    "retry": Job.RETRY_FAILED_BATCHES,
    "remove-old-exports": Job.REMOVE_OLD_EXPORTS,
    "check-freshness": Job.CHECK_DASHBOARD_FRESHNESS,
    "export": Job.EXPORT_REPORT,
    "seal-sessions": Job.SEAL_SESSION_HOURS,
}
# And back: the name a run of a job is shown by (the admin API, `analytics jobs`).
COMMAND_OF: dict[Job, str] = {job: name for name, job in BY_COMMAND.items()} | {
    Job.ERASE_USER: "erase"  # `analytics erase USER_ID`: its own command, not `jobs run`
}
# The jobs that take no arguments (export takes a report, a format and a range).
WITHOUT_ARGUMENTS: tuple[str, ...] = tuple(
    name for name, job in BY_COMMAND.items() if job is not Job.EXPORT_REPORT
)


def unknown_job(name: str) -> str:
    return f"unknown job {name!r}; one of: {', '.join(BY_COMMAND)}"


# At most one run of the retry job waits at a time, however many batches are handed off.
RETRY_JOB_ID = Job.RETRY_FAILED_BATCHES.value


def export_job_id(export_id: str) -> str:
    return f"export:{export_id}"


def erasure_job_id(erasure_id: str) -> str:
    return f"erasure:{erasure_id}"
