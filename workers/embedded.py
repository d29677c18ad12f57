"""The arq worker inside `analytics serve`: same jobs and crons, sharing the API's clients.

Redis may be down when the process starts or go away later; the worker is restarted with
backoff rather than taking the API down with it.
"""

from __future__ import annotations

import asyncio
import logging

from arq.connections import ArqRedis
from arq.worker import Worker

from core.metrics import RESTARTS
from workers.context import JobContext
from workers.settings import CRON_JOBS, FUNCTIONS

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, redis_url: str, job: JobContext) -> None:
        self._redis_url = redis_url
        self._job = job
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="arq-worker")

    async def _supervise(self) -> None:
        backoff = 1.0
        while True:
            pool: ArqRedis = ArqRedis.from_url(
                self._redis_url, socket_timeout=5.0, socket_connect_timeout=1.0
            )
            self._worker = Worker(
                functions=FUNCTIONS,
                cron_jobs=CRON_JOBS,
                redis_pool=pool,
                ctx={"job": self._job},
                handle_signals=False,
            )
            try:
                await self._worker.async_run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis gone, mostly: restart, counted
                RESTARTS.labels("embedded_worker").inc()
                log.warning("arq worker stopped (%s); restarting in %.0fs", error, backoff)
                await asyncio.gather(pool.aclose(), return_exceptions=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def close(self) -> None:
        worker = self._worker
        if worker is not None:
            # arq's close cancels the jobs still running, and its gather then raises their
            # CancelledError; it is theirs, not ours, so it is collected here, not raised.
            (outcome,) = await asyncio.gather(
                asyncio.wait_for(worker.close(), timeout=10), return_exceptions=True
            )
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):  # Redis gone: nothing more to tidy there
                log.warning("arq worker did not close cleanly: %s", outcome)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
