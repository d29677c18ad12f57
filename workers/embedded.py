"""The arq worker inside `analytics serve`: same jobs and crons, sharing the API's clients.

Redis may be down when the process starts or go away later; the worker is restarted with
backoff rather than taking the API down with it.
"""

from __future__ import annotations

import asyncio
import logging

from arq.connections import ArqRedis
from arq.worker import Worker

from core.supervisor import Backoff, supervise
from workers.context import JobContext
from workers.settings import CRON_JOBS, FUNCTIONS, JOB_TIMEOUT_SECONDS, KEEP_RESULT_SECONDS

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, redis_url: str, job: JobContext) -> None:
        self._redis_url = redis_url
        self._job = job
        self._worker: Worker | None = None
        self._pool: ArqRedis | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(
            supervise(
                "embedded_worker",
                self._run,
                backoff=Backoff(1.0, 30.0),
                stop=self._closing,
                on_failure=self._drop,
            ),
            name="arq-worker",
        )

    async def _run(self, backoff: Backoff) -> None:
        self._pool = ArqRedis.from_url(
            self._redis_url, socket_timeout=5.0, socket_connect_timeout=1.0
        )
        self._worker = Worker(
            functions=FUNCTIONS,
            cron_jobs=CRON_JOBS,
            redis_pool=self._pool,
            ctx={"job": self._job},
            handle_signals=False,
            keep_result=KEEP_RESULT_SECONDS,  # as the standalone worker (workers/settings.py)
            job_timeout=JOB_TIMEOUT_SECONDS,
        )
        await self._worker.async_run()

    async def _drop(self, error: Exception) -> None:
        """Redis gone, mostly: the pool goes, the supervisor makes a new worker."""
        if self._pool is not None:
            await asyncio.gather(self._pool.aclose(), return_exceptions=True)
            self._pool = None

    async def close(self) -> None:
        # No restart once closing: arq's close drops its pool under the running worker, whose
        # next health check then fails (`None.psetex`) and would otherwise start a new one.
        self._closing.set()
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
        # A cancellation arq swallows (it runs its own close on the way out) would leave the
        # task running and this wait forever: cancel until it is done.
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # its outcome, taken
