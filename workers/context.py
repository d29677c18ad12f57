"""What a job gets: a typed context instead of arq's dict and `ctx.get(...)` fallbacks.

arq hands every job its ctx dict; the worker's start-up puts a `JobContext` in it under
`"job"`. Jobs that need only some clients (ClickHouse for an archive run, say) are given a
context without the others by the CLI and the tests; asking for one that is missing says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from core.clickhouse import Warehouse
from core.publisher import EventPublisher
from core.runtime import Runtime
from core.settings import Settings
from core.storage import Storage
from tracked.retry_queue import RetryQueue


@dataclass(frozen=True, slots=True)
class JobContext:
    settings: Settings
    warehouse: Warehouse
    redis: ArqRedis | None = None
    publisher: EventPublisher | None = None  # None: results are stored, not announced
    storage: Storage | None = None

    @classmethod
    def of(cls, runtime: Runtime) -> JobContext:
        return cls(
            settings=runtime.settings,
            warehouse=runtime.warehouse,
            redis=runtime.redis,
            publisher=runtime.publisher,
            storage=runtime.storage_if_open,
        )

    def need_redis(self) -> ArqRedis:
        if self.redis is None:
            raise RuntimeError("this job needs Redis, and its context has none")
        return self.redis

    def need_storage(self) -> Storage:
        if self.storage is None:
            raise RuntimeError("this job needs the object storage, and its context has none")
        return self.storage

    @property
    def retry_queue(self) -> RetryQueue:
        return RetryQueue(self.need_redis())


def job_context(ctx: dict[str, Any]) -> JobContext:
    found: JobContext = ctx["job"]
    return found
