"""Every process of the service, assembled in one place from the one `Runtime`: what it opens
and runs, started in order and stopped in reverse.

- `analytics serve` (the embedded default, one process): the runtime with every role, the arq
  worker and the domain-event consumer in the same event loop, the `event.tracked` relay as a
  child process (`RelayChild`), then the beacon path's parts (the tracking log and its writer).
- `analytics api`: the runtime and the beacon path's parts in each of its HTTP workers.
- `analytics consume`: the runtime and the consumer (`run_consume`).
- `analytics relay`, and `serve`'s child: the relay over the log directories (`run_relay`).
- The standalone worker is built by arq from `workers.WorkerSettings`, the entry point the
  deployment runs (a package below this one cannot import it); its start-up opens the same
  runtime and the same ops endpoints (`workers/settings.py`).

Stopping runs the other way: the beacon path places what the log holds (and the relay gets a
few seconds to publish it), then the relay, the consumer and the worker stop, then the
runtime's clients close; the claim on the log directory is let go last. The HTTP app
(`api/app.py`) only serves HTTP: it starts and stops an assembly and reads its `Services`.
Outside `serve`, each process serves `/metrics`, `/healthz` and `/readyz` on METRICS_PORT.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from sanic import Sanic

from api.app import create_app
from api.services import Services
from consumers.consumer import DomainEventConsumer
from core.ops import OpsHooks, readiness, serve_ops
from core.redaction import configure_logging
from core.runtime import Role, Runtime
from core.settings import Settings
from core.supervisor import Backoff, supervise
from ingest.parts import IngestParts
from ingest.relay import Relay
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
        ingest = await IngestParts.open(runtime, counts_relayed=relay is not None)

        async def release() -> None:
            ingest.release()

        self._stops.insert(0, ("log directory", release))

        async def drain() -> None:
            await ingest.close()
            if relay is not None:
                # The rest waits on disk for the next start.
                await ingest.relayed(within=RELAY_DRAIN_SECONDS)

        self._then_stop("beacon path", drain)
        return Services(
            runtime=runtime,
            ingest=ingest,
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


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


def run_consume(settings: Settings) -> None:
    """`analytics consume`: until SIGTERM or SIGINT."""

    async def run() -> None:
        stop = _stop_on_signals()
        runtime = await Runtime.open(settings, {Role.CONSUMER})
        consumer = DomainEventConsumer.for_settings(settings, runtime.warehouse, runtime.redis)
        consumer.start()

        async def consuming() -> bool:
            return consumer.status().ready

        ops = None
        if settings.metrics_port:
            ready = readiness(
                {"consumer": consuming},
                lambda: {"consumer": msgspec.to_builtins(consumer.status())},
            )
            ops = await serve_ops(
                settings.host,
                settings.metrics_port,
                OpsHooks(ready, metrics_token=settings.metrics_token),
                role="consume",
            )
        await stop.wait()
        if ops is not None:
            await ops.close()
        await consumer.close()
        await runtime.close()

    asyncio.run(run())


def run_relay(settings: Settings, parent: int = 0) -> None:
    """A relay process: `analytics relay`, or (with `parent`) `analytics serve`'s child, which
    stops when its parent is gone however the parent went. SIGTERM or SIGINT stop it."""
    if not logging.getLogger().handlers:  # a spawned child starts with no logging set up
        configure_logging()

    root = Path(settings.tracking_log_dir).resolve()

    async def run() -> None:
        stop = _stop_on_signals()
        relay = Relay(
            root,
            settings.amqp_url,
            settings.amqp_exchange,
            alive=(lambda: os.getppid() == parent) if parent else (lambda: True),
        )
        ops = None
        if settings.metrics_port and not parent:

            async def connected() -> bool:
                return relay.connected.is_set()

            ready = readiness({"rabbitmq": connected}, lambda: {"published": relay.published})
            ops = await serve_ops(
                settings.host,
                settings.metrics_port,
                OpsHooks(ready, metrics_token=settings.metrics_token),
                role="relay",
            )
        await relay.run(stop)
        if ops is not None:
            await ops.close()

    asyncio.run(run())


class ChildExited(RuntimeError):
    """The relay child process ended while the parent still runs."""


class RelayChild:
    """`analytics serve`'s relay: a child process (a core of its own), started again when it
    dies (counted in `component_restarts_total{component="relay"}`), stopped at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._child: multiprocessing.process.BaseProcess | None = None
        self._task = asyncio.create_task(
            supervise("relay", self._run_child, backoff=Backoff(1.0, 30.0), stop=self._stopping),
            name="relay-child",
        )

    async def _run_child(self, backoff: Backoff) -> None:
        self._child = multiprocessing.get_context("spawn").Process(
            target=run_relay, args=(self._settings, os.getpid()), name="relay", daemon=True
        )
        self._child.start()
        await _exited(self._child)
        if not self._stopping.is_set():
            raise ChildExited(f"the relay child exited with {self._child.exitcode}")

    async def stop(self) -> None:
        self._stopping.set()
        child = self._child
        if child is not None and child.exitcode is None:
            child.terminate()  # SIGTERM: it finishes the chunk in flight and commits
            try:
                await asyncio.wait_for(_exited(child), 15)
            except TimeoutError:
                child.kill()
                await _exited(child)
        self._task.cancel()  # it may be waiting out a restart's backoff
        await asyncio.gather(self._task, return_exceptions=True)


async def _exited(process: multiprocessing.process.BaseProcess) -> None:
    """Wait for `process` to exit without a thread: its sentinel becomes readable then."""
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    sentinel = process.sentinel

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(sentinel, exited)
    try:
        await gone
    finally:
        loop.remove_reader(sentinel)
    process.join()
