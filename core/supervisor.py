"""The one supervisor: a background part that fails is logged, counted and started again after
a wait that doubles up to a ceiling, reset once the part says it is healthy again.

`await supervise("publisher", run)` calls `run(backoff)` until it returns (the part is done)
or `stop` is set; an exception (never a cancellation) is counted in
`component_restarts_total{component}`, logged once per failure with the wait, handed to
`on_failure` (to tidy a connection, put a batch back) and followed by the wait. `run` calls
`backoff.reset()` when it is healthy (connected, consuming), so a part that fails after a
long good run starts again quickly, and one that cannot start waits longer each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from core.metrics import RESTARTS

log = logging.getLogger(__name__)


class Backoff:
    """Waits that double from `first` to `ceiling`."""

    def __init__(self, first: float = 0.5, ceiling: float = 30.0) -> None:
        self.first, self.ceiling = first, ceiling
        self.seconds = first

    def reset(self) -> None:
        self.seconds = self.first

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the current wait (cut short by `stop`), then double it for the next."""
        seconds, self.seconds = self.seconds, min(self.seconds * 2, self.ceiling)
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def supervise(
    component: str,
    run: Callable[[Backoff], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
    stop: asyncio.Event | None = None,
    on_failure: Callable[[Exception], Awaitable[None]] | None = None,
) -> None:
    waits = backoff or Backoff()
    while stop is None or not stop.is_set():
        try:
            await run(waits)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure of the part: counted, started again
            RESTARTS.labels(component).inc()
            log.warning(
                "%s failed (%s: %s); starting it again in %.1fs",
                component,
                type(error).__name__,
                error,
                waits.seconds,
            )
            if on_failure is not None:
                await on_failure(error)
            await waits.wait(stop)
