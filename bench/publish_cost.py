"""The cost of one `event.tracked` message on each publishing path, in one run.

Publishes the same N envelopes with publisher confirms, each path on a fresh connection:

1. aio-pika `exchange.publish`, a chunk of 500 gathered (the path the ingest loop used to take);
2. aiormq `basic_publish`, a chunk of 2,000 in flight (the relay's path until 2026-11-28);
3. hand-encoded frames (`ingest/amqp_frames.py`), a chunk of 5,000 written at once;
4. the relay itself (path 3), reading the same messages from a tracking log on disk (each
   message beside its accepted event, as the log holds them).

For each: messages/s, CPU time of this process per message (`time.process_time`) and of the
broker (RabbitMQ's `beam.smp`, on this machine, from /proc). Ratios against path 1.

    .venv/bin/python -m bench.publish_cost [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import msgspec
from pamqp.commands import Basic

from ingest.amqp_frames import ConfirmingPublisher
from ingest.relay import Relay
from tracked.message import ROUTING_KEY, envelope, envelope_lines
from tracked.row import TrackingRow

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def rows(n: int) -> list[TrackingRow]:
    at = datetime.now(UTC)
    return [
        TrackingRow(
            event_id=uuid.uuid4(),
            event_type="PAGEVIEW",
            session_id=uuid.uuid4(),
            user_id=None,
            received_at=at,
            client_timestamp=None,
            occurred_at=at,
            url="https://www.lomashwood.co.uk/kitchens/shaker-oak",
            properties='{"productId":"kit-shaker-oak","price":1249.5}',
        )
        for _ in range(n)
    ]


def broker_cpu_s() -> float:
    """CPU seconds RabbitMQ's Erlang VM has used (0 when it is not on this machine)."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if b"beam.smp" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


async def measure(
    name: str, run: Callable[[], Awaitable[None]], n: int
) -> tuple[str, float, float, float]:
    broker, cpu, wall = broker_cpu_s(), time.process_time(), time.perf_counter()
    await run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    broker = broker_cpu_s() - broker
    return name, n / wall, cpu / n * 1e6, broker / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    n = parser.parse_args().messages
    exchange_name = f"bench.publish.{uuid.uuid4().hex[:8]}"
    messages = [(str(row.event_id), envelope(row)) for row in rows(n)]
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=False
    )
    # A queue bound, so the broker routes (and persists) every message as in production.
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, ROUTING_KEY)

    async def aio_pika_path() -> None:
        for at in range(0, n, 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            message_id=message_id,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=ROUTING_KEY,
                    )
                    for message_id, body in messages[at : at + 500]
                )
            )

    underlay = await channel.get_underlay_channel()

    async def aiormq_path() -> None:
        for at in range(0, n, 2000):
            await asyncio.gather(
                *(
                    underlay.basic_publish(
                        body,
                        exchange=exchange_name,
                        routing_key=ROUTING_KEY,
                        properties=Basic.Properties(
                            message_id=message_id, content_type="application/json", delivery_mode=2
                        ),
                    )
                    for message_id, body in messages[at : at + 2000]
                )
            )

    async def frames_path() -> None:
        publisher = await ConfirmingPublisher.connect(AMQP_URL, exchange_name, ROUTING_KEY)
        encoded = [(message_id.encode(), body) for message_id, body in messages]
        for at in range(0, n, 5000):
            await publisher.publish(encoded[at : at + 5000])
        await publisher.close()

    results = [await measure("aio-pika, 500 gathered (old ingest path)", aio_pika_path, n)]
    await queue.purge()
    results.append(await measure("aiormq, 2,000 in flight (old relay path)", aiormq_path, n))
    await queue.purge()
    results.append(await measure("hand-encoded frames, 5,000 a write", frames_path, n))
    await queue.purge()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p").mkdir()
        with (root / "p" / f"{1:020d}.jsonl").open("wb") as segment:
            for at in range(0, n, 10_000):
                batch = rows(min(10_000, n - at))
                segment.write(msgspec.json.Encoder().encode_lines(batch) + envelope_lines(batch))
        relay = Relay(root, AMQP_URL, exchange_name, poll_s=0.01)

        async def relay_path() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            while relay.published < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            stop.set()
            await task

        label = "the relay (frames), from a tracking log on disk"
        results.append(await measure(label, relay_path, n))
    await queue.purge()
    await channel.exchange_delete(exchange_name)
    await connection.close()

    base_rate, base_cpu = results[0][1], results[0][2]
    print(f"{n:,} messages, publisher confirms, a queue bound, broker on this machine")
    print(
        f"{'path':<44}{'msgs/s':>10}{'CPU µs/msg':>12}{'broker µs':>11}"
        f"{'rate ratio':>12}{'CPU ratio':>11}"
    )
    for name, rate, cpu, broker in results:
        print(
            f"{name:<44}{rate:>10,.0f}{cpu:>12.1f}{broker:>11.1f}"
            f"{rate / base_rate:>12.2f}{cpu / base_cpu:>11.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
