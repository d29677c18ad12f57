"""The processes that serve HTTP, each assembled in one place from the one `Runtime`: what it
opens and runs, started in order and stopped in reverse.

`analytics serve` (the embedded default, one process): the runtime with every role, the arq
worker and the domain-event consumer in the same event loop, the `event.tracked` relay as a
child process, then the beacon pipeline (the tracking log and its writer). `analytics api`:
the runtime and the pipeline only; the consumer, the relay and the worker run as processes of
their own (`cli/main.py`, `ingest/relay.py`, `workers/settings.py`).

Stopping runs the other way: the pipeline places what the log holds (and the relay gets a few
seconds to publish it), then the relay, the consumer and the worker stop, then the runtime's
clients close; the claim on the log directory is let go last. The HTTP app (`api/app.py`) only
serves HTTP: it starts and stops an assembly and reads its `Services`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sanic import Sanic

from api.app import create_app
from api.services import Services
from consumers.consumer import DomainEventConsumer
from core.runtime import Role, Runtime
from core.settings import Settings
from ingest.pipeline import Pipeline
from ingest.relay import RelayChild
from materialized.snapshots import OnDemand
from workers.context import JobContext
from workers.embedded import EmbeddedWorker

log = logging.getLogger(__name__)

RELAY_DRAIN_SECONDS = 5.0  # at shutdown, for the relay to publish what was placed


class Assembly:
    def __init__(self, settings: Settings, *, embedded: bool, relay: bool) -> None:
        self._settings = settings
        self._embedded = embedded
        self._relay = relay
        self._stops: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    @classmethod
    def serve(cls, settings: Settings) -> Assembly:
        return cls(settings, embedded=True, relay=True)

    @classmethod
    def api(cls, settings: Settings) -> Assembly:
        return cls(settings, embedded=False, relay=False)

    def _then_stop(self, name: str, stop: Callable[[], Awaitable[None]]) -> None:
        self._stops.append((name, stop))

    async def start(self) -> Services:
        settings = self._settings
        roles = {Role.HTTP, Role.INGEST}
        if self._embedded:
            roles |= {Role.CONSUMER, Role.WORKER}
        runtime = await Runtime.open(settings, roles)
        self._then_stop("runtime", runtime.close)
        worker = consumer = None
        if self._embedded:
            worker = EmbeddedWorker(settings.redis_url, JobContext.of(runtime))
            worker.start()
            self._then_stop("worker", worker.close)
            consumer = DomainEventConsumer.for_settings(settings, runtime.warehouse, runtime.redis)
            consumer.start()
            self._then_stop("consumer", consumer.close)
        relay = RelayChild(settings) if self._relay else None
        if relay is not None:
            self._then_stop("relay", relay.stop)
        pipeline = await Pipeline.open(runtime, counts_relayed=relay is not None)

        async def release() -> None:
            pipeline.release()

        self._stops.insert(0, ("log directory", release))

        async def drain() -> None:
            await pipeline.close()
            if relay is not None:
                # The rest waits on disk for the next start.
                await pipeline.relayed(within=RELAY_DRAIN_SECONDS)

        self._then_stop("pipeline", drain)
        return Services(
            runtime=runtime,
            pipeline=pipeline,
            on_demand=OnDemand(runtime.warehouse),
            consumer=consumer,
            worker=worker,
        )

    async def stop(self) -> None:
        """Everything started, in reverse; a part that fails to stop is logged and the rest
        still stop."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                await stop()
            except Exception:
                log.exception("stopping %s failed", name)


def http_app(settings: Settings, *, embedded: bool, name: str = "lomash_analytics") -> Sanic:  # type: ignore[type-arg]
    """`analytics serve` (`embedded`) or one worker process of `analytics api`."""
    parts = Assembly.serve(settings) if embedded else Assembly.api(settings)
    return create_app(settings, parts, name)
