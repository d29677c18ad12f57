"""Publishes our events on the platform exchange, with publisher confirms, in batches.

`publish` only appends to an in-memory backlog, so a slow or absent broker never delays the
caller. A background task sends the backlog in chunks and waits for the broker's confirms; what
is not confirmed goes back to the front and is sent again after a reconnect. Messages carry the
envelope's eventId as message_id, so consumers can drop the rare re-send. The backlog is
bounded: past `max_backlog` the oldest messages are discarded and counted, never silently.

`event.tracked` is not published here: the relay publishes it from the tracking log
(`ingest/relay.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

import aio_pika
import msgspec
from aio_pika.abc import AbstractRobustExchange

from core.metrics import (
    PUBLISH_BACKLOG,
    PUBLISH_FAILURES,
    PUBLISH_LOST,
    PUBLISHED,
    lose,
)
from core.supervisor import Backoff, supervise

log = logging.getLogger(__name__)


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """A message waiting in the backlog; gc=False keeps a large backlog cheap for the GC."""

    routing_key: str
    message_id: str
    body: bytes


class EventPublisher:
    def __init__(
        self, url: str, exchange: str, *, max_backlog: int = 1_000_000, chunk: int = 500
    ) -> None:
        self._url = url
        self._exchange_name = exchange
        self._max_backlog = max_backlog
        self._chunk = chunk
        self._backlog: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._sending: list[Outgoing] = []  # taken from the backlog, confirms not yet in
        self.connected = asyncio.Event()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    @property
    def is_connected(self) -> bool:
        """Connected to the broker now (a dropped connection shows at once, not at the next
        publish)."""
        connection = self._connection
        return self.connected.is_set() and connection is not None and not connection.is_closed

    def publish(self, routing_key: str, message_id: str, body: bytes) -> None:
        if len(self._backlog) >= self._max_backlog:
            lost = self._backlog.popleft()
            PUBLISH_LOST.labels(lost.routing_key).inc()
            lose("publish_lost")
        self._backlog.append(Outgoing(routing_key, message_id, body))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(
            supervise(
                "publisher", self._run, backoff=Backoff(0.5, 10.0), on_failure=self._disconnected
            ),
            name="publisher",
        )

    async def close(self, drain_within: float = 5.0) -> None:
        """Give the backlog a few seconds to go out, then stop; count what could not."""
        if self._task is not None:
            deadline = asyncio.get_running_loop().time() + drain_within
            while (self._backlog or self._sending) and (  # noqa: ASYNC110
                asyncio.get_running_loop().time() < deadline
            ):
                await asyncio.sleep(0.05)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        unsent = [*self._sending, *self._backlog]
        for message in unsent:
            PUBLISH_LOST.labels(message.routing_key).inc()
        if unsent:
            log.error("%d messages were not confirmed before shutdown", len(unsent))
        self._backlog.clear()
        self._sending = []
        if self._connection is not None:
            await self._connection.close()

    async def _run(self, backoff: Backoff) -> None:
        self._connection = await aio_pika.connect(self._url, timeout=5)
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.connected.set()
        backoff.reset()
        await self._pump(exchange)  # type: ignore[arg-type]

    async def _disconnected(self, error: Exception) -> None:
        """Any failure of the connection: the supervisor connects again, counted."""
        self.connected.clear()
        if self._connection is not None:
            await asyncio.gather(self._connection.close(), return_exceptions=True)
            self._connection = None

    async def _pump(self, exchange: AbstractRobustExchange) -> None:
        while True:
            PUBLISH_BACKLOG.set(len(self._backlog))
            if not self._backlog:
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk = [self._backlog.popleft() for _ in range(min(self._chunk, len(self._backlog)))]
            self._sending = chunk
            results = await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            m.body,
                            message_id=m.message_id,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=m.routing_key,
                    )
                    for m in chunk
                ),
                return_exceptions=True,
            )
            self._sending = []
            failed = [
                m for m, r in zip(chunk, results, strict=True) if isinstance(r, BaseException)
            ]
            confirmed: Counter[str] = Counter()
            for m, r in zip(chunk, results, strict=True):
                if not isinstance(r, BaseException):
                    confirmed[m.routing_key] += 1
            for routing_key, count in confirmed.items():
                PUBLISHED.labels(routing_key).inc(count)
            if failed:
                for m in failed:
                    PUBLISH_FAILURES.labels(m.routing_key).inc()
                self._backlog.extendleft(reversed(failed))
                raise ConnectionError(f"{len(failed)} of {len(chunk)} messages not confirmed")
