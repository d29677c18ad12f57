"""Domain events end to end: published, consumed, validated, deduplicated, stored and acked,
against aio-pika alone consuming and acking the same messages, in the same run.

Both queues are bound to one exchange, so they receive the same messages; the raw consumer
acks in batches of the same size with the same prefetch. Mixed realistic payloads.

    .venv/bin/python -m bench.consume_rate [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import msgspec
from arq.connections import ArqRedis

from consumers.consumer import DomainEventConsumer
from consumers.schemas import CONTRACTS
from core.clickhouse import Warehouse
from core.migrations import migrate
from tests.domain_events import MAKERS

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
BATCH = 500


async def publish(exchange: aio_pika.abc.AbstractExchange, count: int) -> float:
    keys = list(MAKERS)
    bodies = [(key, msgspec.json.encode(MAKERS[key]())) for key in random.choices(keys, k=count)]
    started = time.perf_counter()
    for start in range(0, count, 1000):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body), routing_key=key)
                for key, body in bodies[start : start + 1000]
            )
        )
    return count / (time.perf_counter() - started)


async def raw_consume(channel: aio_pika.abc.AbstractChannel, queue_name: str, count: int) -> float:
    await channel.set_qos(prefetch_count=BATCH * 4)  # as the service consumer
    queue = await channel.get_queue(queue_name)
    done = asyncio.Event()
    seen = 0

    async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        seen += 1
        if seen % BATCH == 0 or seen == count:
            await message.ack(multiple=True)
        if seen == count:
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(take)
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.cancel(tag)
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    n = args.messages
    name = f"bench.domain.{uuid.uuid4().hex[:8]}"

    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    raw_queue = await channel.declare_queue(f"{name}.raw", durable=True)
    for key in CONTRACTS:
        await raw_queue.bind(exchange, key)

    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(f"chdb://{Path(tmp) / 'ch'}", "bench")
        await warehouse.open()
        await migrate(warehouse)
        redis = ArqRedis.from_url("redis://127.0.0.1:6379/14")

        def make_consumer() -> DomainEventConsumer:
            return DomainEventConsumer(
                amqp_url=AMQP,
                exchange=name,
                warehouse=warehouse,
                redis=redis,
                report_timezone="Europe/London",
                queue=f"{name}.q",
                batch_size=BATCH,
            )

        consumer = make_consumer()
        # Declare the service's queue (and bindings) first, then stop taking messages, so that
        # both queues hold the full backlog before either consumer starts.
        consumer.start()
        await consumer.connected.wait()
        await consumer.close()

        published = await publish(exchange, n)
        raw = await raw_consume(channel, f"{name}.raw", n)

        consumer = make_consumer()
        started = time.perf_counter()
        consumer.start()
        while int(await warehouse.scalar("SELECT count() FROM analytics_events")) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        service = n / (time.perf_counter() - started)
        await asyncio.sleep(0.5)  # the last batch's ack follows its insert
        await consumer.close()
        # Anything stored but not acked would now be back in the queue, ready.
        check = await channel.declare_queue(f"{name}.q", durable=True, passive=True)
        left = check.declaration_result.message_count
        stored = int(await warehouse.scalar("SELECT uniqExact(event_id) FROM analytics_events"))
        await warehouse.close()
        await redis.aclose()

    for queue in (f"{name}.raw", f"{name}.q", f"{name}.q.dlq"):
        await channel.queue_delete(queue)
    await channel.exchange_delete(name)
    await channel.exchange_delete(f"{name}.q.dlx")
    await connection.close()

    print(f"messages:                         {n:,} (all nine routing keys, mixed)")
    print(f"published with confirms:          {published:,.0f}/s")
    print(f"aio-pika alone, consume + ack:    {raw:,.0f}/s")
    print(f"service, consume/validate/store/ack: {service:,.0f}/s")
    print(f"service / raw:                    {service / raw:.2f}")
    print(f"rows stored: {stored:,} of {n:,}; left unacked in the queue: {left}")


if __name__ == "__main__":
    asyncio.run(main())
