"""The domain-event consumer: RabbitMQ -> validate -> dedupe -> ClickHouse, acked in bulk.

A durable queue of our own is bound to the platform exchange for every routing key we know.
Messages are taken in batches (prefetch four batches). For each batch, in order:
  1. decode and validate each message; an invalid one is published to the dead-letter
     exchange with the reason in the `x-reason` header (confirmed before we go on);
  2. drop events whose eventId is already stored (or repeated in the batch);
  3. insert the rest with a deduplication token made of their ids;
  4. bump the live counters and drop cached dashboard answers;
  5. ack the whole batch with one multiple-ack.
Nothing is acked before it is stored or dead-lettered. If ClickHouse refuses, the batch is
retried with backoff while unacked (the prefetch stops the inflow); if the connection drops,
the broker redelivers what was not acked and step 2 keeps it from being counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import aio_pika
import msgspec
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from redis.asyncio import Redis

from consumers.mapping import DomainRow, Invalid, to_row
from consumers.schemas import CONTRACTS
from core.metrics import (
    DOMAIN_BATCH_SECONDS,
    DOMAIN_DEAD_LETTERED,
    DOMAIN_DUPLICATES,
    DOMAIN_RECEIVED,
    DOMAIN_STORED,
)
from core.settings import Settings
from materialized import counters, dashboard_cache
from materialized.warehouse import Warehouse

log = logging.getLogger(__name__)

COLUMNS = DomainRow.__struct_fields__
T = TypeVar("T")


class DomainEventConsumer:
    def __init__(
        self,
        *,
        amqp_url: str,
        exchange: str,
        warehouse: Warehouse,
        redis: Redis,
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
        self._pending: list[AbstractIncomingMessage] = []
        self._full = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._dlx: AbstractRobustExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._encoder = msgspec.json.Encoder()

    @classmethod
    def for_settings(
        cls, settings: Settings, warehouse: Warehouse, redis: Redis
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
        """Connect in the background: a broker that is down at start-up delays consuming,
        never the process. Once connected, aio-pika's robust connection reconnects, redeclares
        and resumes consuming by itself."""
        self._task = asyncio.create_task(self._connect_then_run(), name="domain-consumer")

    async def _connect_then_run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._connect()
                break
            except Exception as error:
                log.warning("consumer cannot reach RabbitMQ (%s); retry in %.1fs", error, backoff)
                if self._connection is not None:
                    await asyncio.gather(self._connection.close(), return_exceptions=True)
                    self._connection = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self.connected.set()
        await self._run()

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
        self._pending.append(message)
        DOMAIN_RECEIVED.inc()
        if len(self._pending) >= self._batch_size:
            self._full.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=self._flush)
            self._full.clear()
            while self._pending:
                batch = self._pending[: self._batch_size]
                del self._pending[: self._batch_size]
                await self._handle(batch)

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        received_at = datetime.now(UTC)
        rows: list[DomainRow] = []
        for message in batch:
            try:
                rows.append(to_row(message.routing_key or "", message.body, received_at))
            except Invalid as error:
                await self._dead_letter(message, str(error))
        fresh = await self._unseen(rows)
        if fresh:
            await self._store(fresh)
            await counters.record(self._redis, fresh, self._zone)
            await dashboard_cache.invalidate(self._redis)
        try:
            await batch[-1].ack(multiple=True)
        except Exception as error:
            # The channel this batch came on is gone; the broker will redeliver it and the
            # eventId check above keeps the stored part from being stored again.
            log.warning("could not ack %d messages (%s); they will come back", len(batch), error)
        DOMAIN_BATCH_SECONDS.observe(time.perf_counter() - started)

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

    async def _unseen(self, rows: list[DomainRow]) -> list[DomainRow]:
        """Rows whose eventId is neither earlier in the batch nor already stored."""
        first: dict[object, DomainRow] = {}
        for row in rows:
            first.setdefault(row.event_id, row)
        if not first:
            return []
        stored = {
            r[0]
            for r in await self._retrying(
                lambda: self._warehouse.rows(
                    "SELECT event_id FROM analytics_events WHERE event_id IN {ids:Array(UUID)}",
                    {"ids": list(first)},
                )
            )
        }
        fresh = [row for event_id, row in first.items() if event_id not in stored]
        if len(fresh) < len(rows):
            DOMAIN_DUPLICATES.inc(len(rows) - len(fresh))
        return fresh

    async def _store(self, rows: list[DomainRow]) -> None:
        ids = sorted(row.event_id.hex for row in rows)
        token = hashlib.sha256("".join(ids).encode()).hexdigest()
        data = self._encoder.encode_lines(rows)
        await self._retrying(
            lambda: self._warehouse.insert_lines(
                "analytics_events", COLUMNS, data, dedup_token=token
            )
        )
        for row in rows:
            DOMAIN_STORED.labels(row.event_type).inc()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """ClickHouse calls are retried with backoff for as long as it takes; the messages
        stay unacked meanwhile and the prefetch limit stops more from arriving."""
        backoff = 0.5
        while True:
            try:
                return await call()
            except Exception as error:
                log.warning(
                    "ClickHouse unavailable for domain events (%s); retry in %.1fs", error, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
