"""The domain-event consumer: RabbitMQ -> validate -> dedupe -> ClickHouse, acked in bulk.

A durable queue of our own is bound to the platform exchange for every routing key we know.
Messages are taken in batches (prefetch four batches). For each batch, in order:
  1. decode and validate each message, every column value against its type (columns.py); an
     invalid one is published to the dead-letter exchange with the reason in the `x-reason`
     header (confirmed before we go on);
  2. drop events whose eventId is already stored (or repeated in the batch);
  3. insert the rest with a deduplication token made of their ids; if ClickHouse refuses the
     data itself, bisect to the offending messages and dead-letter exactly those;
  4. best effort: bump the live counters, drop the cached dashboards the events change, and
     enqueue a recompute of aggregates that late events make stale;
  5. ack the whole batch with one multiple-ack.
Nothing is acked before it is stored or dead-lettered. If ClickHouse is unavailable, the batch
is retried with backoff while unacked (the prefetch stops the inflow); if the connection
drops, the broker redelivers what was not acked and step 2 keeps it from being counted twice.
A failure of Redis never holds a message: step 4 is skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import zoneinfo
from datetime import UTC, date, datetime

import aio_pika
import msgspec
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from arq.connections import ArqRedis

from consumers.mapping import DomainRow, Invalid, to_row
from consumers.schemas import CONTRACTS
from core.best_effort import best_effort
from core.clickhouse import Warehouse, WarehouseError, retrying
from core.metrics import (
    CONSUMER_LAG,
    CONSUMER_RESTARTS,
    CONSUMER_UNACKED,
    CONSUMER_UP,
    DOMAIN_BATCH_SECONDS,
    DOMAIN_DEAD_LETTERED,
    DOMAIN_DUPLICATES,
    DOMAIN_RECEIVED,
    DOMAIN_REFUSED,
    DOMAIN_STORED,
    LATE_RECOMPUTES,
)
from core.settings import Settings
from core.supervisor import Backoff, supervise
from materialized import counters, coverage, dashboard_cache

log = logging.getLogger(__name__)

COLUMNS = DomainRow.__struct_fields__
Taken = tuple[AbstractIncomingMessage, DomainRow]
STALLED_AFTER_S = 120.0  # an unacked message older than this makes the consumer not ready


class ConsumerStatus(msgspec.Struct, rename="camel"):
    alive: bool  # the supervised task runs
    connected: bool
    unacked: int
    oldest_unacked_seconds: float
    stalled: bool

    @property
    def ready(self) -> bool:
        return self.alive and self.connected and not self.stalled


_watched: DomainEventConsumer | None = None  # the consumer /metrics reports on


def _status() -> ConsumerStatus | None:
    return None if _watched is None else _watched.status()


CONSUMER_UP.set_function(lambda: 1.0 if (s := _status()) and s.alive and s.connected else 0.0)
CONSUMER_UNACKED.set_function(lambda: float(s.unacked) if (s := _status()) else 0.0)
CONSUMER_LAG.set_function(lambda: s.oldest_unacked_seconds if (s := _status()) else 0.0)


class DomainEventConsumer:
    def __init__(
        self,
        *,
        amqp_url: str,
        exchange: str,
        warehouse: Warehouse,
        redis: ArqRedis,
        report_timezone: str,
        queue: str,
        batch_size: int = 500,
        flush_ms: int = 200,
    ) -> None:
        self._amqp_url = amqp_url
        self._exchange_name = exchange
        self._warehouse = warehouse
        self._redis = redis
        self._zone = zoneinfo.ZoneInfo(report_timezone)
        self.queue_name = queue
        self.dead_letter_queue = f"{queue}.dlq"
        self._dead_letter_exchange = f"{queue}.dlx"
        self._batch_size = batch_size
        self._flush = flush_ms / 1000
        self._pending: list[tuple[AbstractIncomingMessage, float]] = []  # (message, taken at)
        self._inflight: list[tuple[AbstractIncomingMessage, float]] = []
        self._uncounted: set[date] = set()  # days whose live counters missed increments
        self._full = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._dlx: AbstractRobustExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._encoder = msgspec.json.Encoder()

    @classmethod
    def for_settings(
        cls, settings: Settings, warehouse: Warehouse, redis: ArqRedis
    ) -> DomainEventConsumer:
        return cls(
            amqp_url=settings.amqp_url,
            exchange=settings.amqp_exchange,
            queue=settings.amqp_queue,
            warehouse=warehouse,
            redis=redis,
            report_timezone=settings.report_timezone,
        )

    def start(self) -> None:
        """Connect and consume in the background, under a supervisor: a broker that is down
        at start-up delays consuming, never the process; a consume loop that fails is logged,
        counted and started again, its batch taken up where it was. Once connected, aio-pika's
        robust connection reconnects, redeclares and resumes consuming by itself."""
        global _watched
        _watched = self
        self._task = asyncio.create_task(
            supervise("consumer", self._consume, on_failure=self._failed), name="domain-consumer"
        )

    async def _consume(self, backoff: Backoff) -> None:
        if not self.connected.is_set():
            await self._connect()
            self.connected.set()
            backoff.reset()
        await self._run()

    async def _failed(self, error: Exception) -> None:
        if self.connected.is_set():
            CONSUMER_RESTARTS.inc()
            log.error("consume loop failed", exc_info=error)
            # The batch in hand is still unacked: it is handled first on restart.
            self._pending[:0] = self._inflight
            self._inflight = []
        elif self._connection is not None:  # RabbitMQ could not be reached: start afresh
            await asyncio.gather(self._connection.close(), return_exceptions=True)
            self._connection = None

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._amqp_url, client_properties={"connection_name": f"analytics:{self.queue_name}"}
        )
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        await channel.set_qos(prefetch_count=self._batch_size * 4)
        exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._dlx = await channel.declare_exchange(
            self._dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(self.dead_letter_queue, durable=True)
        await dead.bind(self._dead_letter_exchange)
        queue = await channel.declare_queue(
            self.queue_name,
            durable=True,
            arguments={"x-dead-letter-exchange": self._dead_letter_exchange},
        )
        for routing_key in CONTRACTS:
            await queue.bind(exchange, routing_key)
        await queue.consume(self._take)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
        # Unacked messages go back to the queue when the channel closes: nothing is lost.

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self._pending.append((message, time.monotonic()))
        DOMAIN_RECEIVED.inc()
        if len(self._pending) >= self._batch_size:
            self._full.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=self._flush)
            self._full.clear()
            while self._pending:
                self._inflight = self._pending[: self._batch_size]
                del self._pending[: self._batch_size]
                await self._handle([message for message, _ in self._inflight])
                self._inflight = []

    def status(self) -> ConsumerStatus:
        alive = self._task is not None and not self._task.done()
        connected = (
            self.connected.is_set()
            and self._connection is not None
            and not self._connection.is_closed
        )
        held = self._inflight + self._pending
        oldest = min((t for _, t in held), default=None)
        age = 0.0 if oldest is None else time.monotonic() - oldest
        return ConsumerStatus(
            alive=alive,
            connected=connected,
            unacked=len(held),
            oldest_unacked_seconds=round(age, 3),
            stalled=age > STALLED_AFTER_S,
        )

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        received_at = datetime.now(UTC)
        rows: list[tuple[AbstractIncomingMessage, DomainRow]] = []
        for message in batch:
            try:
                rows.append((message, to_row(message.routing_key or "", message.body, received_at)))
            except Invalid as error:
                await self._dead_letter(message, str(error))
        fresh = await self._unseen(rows)
        stored = [row for _, row in await self._store(fresh)] if fresh else []
        if stored:
            await self._after_stored(stored)
        try:
            await batch[-1].ack(multiple=True)
        except (AMQPError, ConnectionError, ChannelInvalidStateError) as error:
            # The channel this batch came on is gone; the broker will redeliver it and the
            # eventId check above keeps the stored part from being stored again.
            log.warning("could not ack %d messages (%s); they will come back", len(batch), error)
        DOMAIN_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _after_stored(self, rows: list[DomainRow]) -> None:
        """Live counters, cached dashboards and late recomputes: best effort, never a reason
        to hold or lose a message. Days whose counters missed are reconciled later."""
        days = counters.tally(rows, self._zone)
        async with best_effort("live_counters") as counting:
            await counters.record(self._redis, days)
        if counting.failed:
            self._uncounted.update(days)
        elif self._uncounted:
            async with best_effort("live_counters") as marking:
                await counters.mark_stale(self._redis, self._uncounted)
            if not marking.failed:
                self._uncounted.clear()
        events = [(row.event_type, row.occurred_at) for row in rows]
        now = datetime.now(UTC)
        async with best_effort("dashboard_cache"):
            await dashboard_cache.invalidate(
                self._redis, dashboard_cache.changed_by(events, now, self._zone)
            )
        async with best_effort("late_recompute"):
            for job in await coverage.late_jobs(self._redis, events):
                if await coverage.enqueue_recompute(self._redis, job, now):
                    LATE_RECOMPUTES.labels(job).inc()

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        assert self._dlx is not None
        DOMAIN_DEAD_LETTERED.labels(message.routing_key or "").inc()
        log.warning("dead-lettering %s: %s", message.routing_key, reason)
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-reason": reason[:1000],
                "x-original-exchange": message.exchange or "",
                "x-original-routing-key": message.routing_key or "",
            }
        )
        await self._dlx.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.routing_key or "",
        )

    async def _unseen(self, rows: list[Taken]) -> list[Taken]:
        """Rows whose eventId is neither earlier in the batch nor already stored."""
        first: dict[object, Taken] = {}
        for taken in rows:
            first.setdefault(taken[1].event_id, taken)
        if not first:
            return []
        stored = {
            r[0]
            for r in await retrying(
                lambda: self._warehouse.rows(
                    "SELECT event_id FROM analytics_events WHERE event_id IN {ids:Array(UUID)}",
                    {"ids": list(first)},
                ),
                "domain_events",
            )
        }
        fresh = [taken for event_id, taken in first.items() if event_id not in stored]
        if len(fresh) < len(rows):
            DOMAIN_DUPLICATES.inc(len(rows) - len(fresh))
        return fresh

    async def _store(self, rows: list[Taken]) -> list[Taken]:
        """Insert the rows; the ones stored. Temporary failures are retried for as long as
        it takes (the messages stay unacked; the prefetch stops the inflow). A permanent one
        (ClickHouse refusing the data) splits the batch in halves until the offending
        messages stand alone; those are dead-lettered with ClickHouse's reason."""
        try:
            await self._insert([row for _, row in rows])
            return rows
        except WarehouseError as error:
            if not error.permanent:
                raise
            if len(rows) == 1:
                message = rows[0][0]
                DOMAIN_REFUSED.labels(message.routing_key or "").inc()
                await self._dead_letter(message, f"ClickHouse refused: {error}")
                return []
        half = len(rows) // 2
        return await self._store(rows[:half]) + await self._store(rows[half:])

    async def _insert(self, rows: list[DomainRow]) -> None:
        ids = sorted(row.event_id.hex for row in rows)
        token = hashlib.sha256("".join(ids).encode()).hexdigest()
        data = self._encoder.encode_lines(rows)
        await retrying(
            lambda: self._warehouse.insert_lines(
                "analytics_events", COLUMNS, data, dedup_token=token
            ),
            "domain_events",
        )
        for row in rows:
            DOMAIN_STORED.labels(row.event_type).inc()
