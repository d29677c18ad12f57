"""Side effects that must never stop the main path: a live counter, a cache, a mark.

`async with best_effort("live_counters"):` runs the block; if it raises, the failure is
counted (`redis_unavailable_total{operation}`), logged once per burst (not once per call: a
Redis outage under load would otherwise write thousands of lines a second), and swallowed.
`.failed` tells the caller whether it has something to make good later.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from core.metrics import REDIS_FAILURES

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
        REDIS_FAILURES.labels(self.operation).inc()
        warn_quietly(
            self.operation,
            "%s skipped (%s: %s); counted in redis_unavailable_total",
            self.operation,
            type(error).__name__,
            error,
        )
        return True


def warn_quietly(operation: str, message: str, *args: object) -> bool:
    """Log `message` unless `operation` was logged in the last QUIET_SECONDS; True if logged."""
    now = time.monotonic()
    if now - _last_logged.get(operation, -QUIET_SECONDS) < QUIET_SECONDS:
        return False
    _last_logged[operation] = now
    log.warning(message + f" (quiet for {QUIET_SECONDS:.0f}s)", *args)
    return True
