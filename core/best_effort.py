"""Side effects that must never stop the main path: a live counter, a cache, a mark.

`async with best_effort("live_counters"):` runs the block; if it raises, the failure is
counted by operation and by what failed (`analytics_side_effect_failures_total{operation,
dependency}`, and `redis_unavailable_total{operation}` too when it was Redis), logged once per
burst (not once per call: a Redis outage under load would otherwise write thousands of lines
a second), and swallowed. `.failed` tells the caller whether it has something to make good
later.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from aio_pika.exceptions import AMQPError
from redis.exceptions import RedisError

from core.clickhouse import WarehouseError
from core.metrics import REDIS_FAILURES, SIDE_EFFECT_FAILURES

log = logging.getLogger(__name__)

QUIET_SECONDS = 60.0  # after a logged failure, the same operation is counted silently this long
_last_logged: dict[str, float] = {}


class best_effort:
    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.failed = False

    async def __aenter__(self) -> best_effort:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if error is None:
            return False
        if not isinstance(error, Exception):  # cancellation and exits pass through
            return False
        self.failed = True
        dependency = failed_dependency(error)
        SIDE_EFFECT_FAILURES.labels(self.operation, dependency).inc()
        if dependency == "redis":
            REDIS_FAILURES.labels(self.operation).inc()
        warn_quietly(
            self.operation,
            "%s skipped (%s failed, %s: %s); counted in analytics_side_effect_failures_total",
            self.operation,
            dependency,
            type(error).__name__,
            error,
        )
        return True


def failed_dependency(error: Exception) -> str:
    """What an exception says failed, for the counter's label."""
    if isinstance(error, RedisError):
        return "redis"
    if isinstance(error, WarehouseError):
        return "clickhouse"
    if isinstance(error, AMQPError):
        return "rabbitmq"
    if isinstance(error, TimeoutError):  # before OSError, of which it is one
        return "timeout"
    if isinstance(error, OSError):
        return "os"
    return "other"


def warn_quietly(operation: str, message: str, *args: object) -> bool:
    """Log `message` unless `operation` was logged in the last QUIET_SECONDS; True if logged."""
    now = time.monotonic()
    if now - _last_logged.get(operation, -QUIET_SECONDS) < QUIET_SECONDS:
        return False
    _last_logged[operation] = now
    log.warning(message + f" (quiet for {QUIET_SECONDS:.0f}s)", *args)
    return True
