"""The background work on arq: the jobs (by verb), their typed context, the cron schedule and
WorkerSettings (`arq workers.WorkerSettings` runs them standalone), and the worker inside
`analytics serve`; and the jobs by the names people type: enqueued, and their recent runs
(`runs`)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first use so that importing a job module does not read the environment.
    if name == "WorkerSettings":
        from workers.settings import worker_settings

        return worker_settings()
    raise AttributeError(name)
