"""Dashboard speed at scale: 10 million browser events and 1 million domain events.

Measures, in one run on one chDB data directory:
  * the dashboard for the last month, uncached (widgets from the rollups), p50 and p95;
  * the same through the HTTP API with the Redis cache warm, p50 and p95;
  * the same widgets computed by scanning the raw events (the baseline of the ratio);
  * recompute-funnels for 30 days (both funnels);
  * the Redis cache hit rate and p50 of admins viewing dashboards of recent ranges, without and
    with a steady stream of domain events for past days (40 to 60 days ago) going through the
    real consumer, and with that stream under the previous policy (every batch dropped every
    cached answer; emulated by dropping them all as often as the consumer stores a batch).

    .venv/bin/python -m bench.dashboard [--tracking 10000000] [--domain 1000000] [--view-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import httpx
import jwt
import msgspec
from sanic import Sanic

from api.app import create_app
from bench.common import quantiles, timed
from cli.assembly import Assembly
from consumers.consumer import DomainEventConsumer
from consumers.schemas import CONTRACTS
from core.clickhouse import Warehouse
from core.migrations import migrate
from core.settings import Settings, load_settings
from materialized import dashboard_cache, widgets
from workers.context import JobContext
from workers.jobs import recompute_funnels

DAYS = 60
ZONE = zoneinfo.ZoneInfo("Europe/London")

# Deterministic synthetic rows, made by ClickHouse itself: sessions of 8 events spread over the
# last 60 days, a user id for a third of them (200k customers), 2% bots, 50 products.
TRACKING = """
INSERT INTO tracking_events (event_id, event_type, session_id, user_id, received_at,
    client_timestamp, occurred_at, url, referrer, user_agent, device_type, browser, os, is_bot,
    country, session_seq, properties)
SELECT generateUUIDv4(number),
    ['PAGEVIEW', 'PAGEVIEW', 'PAGEVIEW', 'PRODUCT_VIEW', 'PRODUCT_VIEW', 'ADD_TO_WISHLIST',
     'CLICK', 'FILTER_APPLY', 'BOOKING_START', 'BOOKING_COMPLETE', 'BROCHURE_REQUEST']
        [1 + cityHash64(number, 1) % 11] AS event_type,
    toUUID(concat('00000000-0000-4000-8000-', leftPad(hex(intDiv(number, 8)), 12, '0'))),
    if(cityHash64(intDiv(number, 8), 2) % 3 = 0,
       toUUID(concat('00000000-0000-4000-9000-',
                     leftPad(hex(cityHash64(intDiv(number, 8), 3) % 200000), 12, '0'))),
       NULL),
    {now:DateTime64(3, 'UTC')} - toIntervalMillisecond(
        cityHash64(intDiv(number, 8), 5) % ({days:UInt64} * 86400000) + (number % 8) * 30000)
        AS at,
    at, at,
    if(cityHash64(number, 8) % 5 = 0,
       concat('https://www.lomashwood.co.uk/blog/post-', toString(cityHash64(number, 6) % 20)),
       concat('https://www.lomashwood.co.uk/kitchens/k', toString(cityHash64(number, 6) % 50))),
    'https://www.google.com/', 'Mozilla/5.0', 'desktop', 'Chrome', 'Windows',
    cityHash64(number, 7) % 50 = 0, 'GB', number % 8 + 1,
    concat('{"productId":"k', toString(cityHash64(number, 6) % 50), '"}')
FROM numbers({first:UInt64}, {count:UInt64})
"""

DOMAIN = """
INSERT INTO analytics_events (event_id, event_type, routing_key, version, occurred_at,
    received_at, customer_id, order_id, booking_id, amount, currency, payload)
SELECT generateUUIDv4(number),
    ['order-created', 'payment-succeeded', 'booking-created', 'booking-cancelled',
     'brochure-request-submitted', 'newsletter-subscription-created', 'review-created']
        [1 + cityHash64(number, 1) % 7] AS event_type,
    concat('lomash.', event_type), '1.0',
    {now:DateTime64(3, 'UTC')} - toIntervalMillisecond(
        cityHash64(number, 5) % ({days:UInt64} * 86400000)) AS at,
    at,
    toUUID(concat('00000000-0000-4000-9000-', leftPad(hex(cityHash64(number, 3) % 200000),
                                                      12, '0'))),
    generateUUIDv4(number + 1), generateUUIDv4(number + 2),
    if(event_type IN ('order-created', 'payment-succeeded'),
       toDecimal128(1000 + cityHash64(number, 9) % 800000 / 100, 6), NULL),
    if(event_type IN ('order-created', 'payment-succeeded'), 'GBP', ''),
    '{}'
FROM numbers({count:UInt64})
"""

RAW = [  # the same widgets as materialized/widgets.py, straight from the raw events
    "SELECT event_type, count() FROM tracking_events WHERE NOT is_bot"
    " AND received_at >= {start:DateTime64(3, 'UTC')} AND received_at < {end:DateTime64(3, 'UTC')}"
    " GROUP BY event_type",
    "SELECT event_type, currency, count(), sum(amount) FROM analytics_events"
    " WHERE occurred_at >= {start:DateTime64(3, 'UTC')}"
    " AND occurred_at < {end:DateTime64(3, 'UTC')} GROUP BY event_type, currency",
    "SELECT JSONExtractString(properties, 'productId') AS p, count() AS v FROM tracking_events"
    " WHERE event_type = 'PRODUCT_VIEW' AND NOT is_bot"
    " AND received_at >= {start:DateTime64(3, 'UTC')} AND received_at < {end:DateTime64(3, 'UTC')}"
    " GROUP BY p ORDER BY v DESC, p LIMIT 10",
    "SELECT count() FROM tracking_events WHERE event_type = 'PAGEVIEW' AND NOT is_bot"
    " AND startsWith(path, '/blog/')"
    " AND received_at >= {start:DateTime64(3, 'UTC')} AND received_at < {end:DateTime64(3, 'UTC')}",
    "SELECT countIf(f >= {start:DateTime64(3, 'UTC')}), countIf(f < {start:DateTime64(3, 'UTC')})"
    " FROM (SELECT customer_id, min(occurred_at) AS f FROM analytics_events"
    "  WHERE event_type = 'order-created' GROUP BY customer_id"
    "  HAVING countIf(occurred_at >= {start:DateTime64(3, 'UTC')}"
    "   AND occurred_at < {end:DateTime64(3, 'UTC')}) > 0)",
]


STREAM_PER_SECOND = 20


async def viewing(
    http: httpx.AsyncClient, end: datetime, seconds: float
) -> tuple[float, float, int]:
    """Views of recent ranges in turn for `seconds`: (hit rate, p50 ms, 0)."""
    periods = widgets.local_periods(end, ZONE)
    ranges = [
        (periods["today"], end),
        (end - timedelta(days=7), end),
        (end - timedelta(days=30), end),
        (periods["month"], end),
    ]
    hits, samples = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for start, stop in ranges:
            started = time.perf_counter()
            answer = await http.get(
                "/v1/analytics/dashboard",
                params={"from": start.isoformat(), "to": stop.isoformat()},
            )
            samples.append((time.perf_counter() - started) * 1000)
            hits += answer.headers["x-cache"] == "HIT"
            await asyncio.sleep(0.05)
    return hits / len(samples), statistics.median(samples), 0


async def streaming(
    settings: Settings, during: Callable[[], Awaitable[tuple[float, float, int]]]
) -> tuple[float, float, int]:
    """`during()` while the platform publishes domain events that occurred 40-60 days ago."""
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    sent = 0

    async def publish() -> None:
        nonlocal sent
        kinds = ["booking-created", "payment-succeeded", "brochure-request-submitted"]
        while True:
            kind = kinds[sent % len(kinds)]
            at = datetime.now(UTC) - timedelta(days=40 + sent % 20, minutes=sent % 600)
            body = past_event(kind, at)
            routing_key = next(k for k, c in CONTRACTS.items() if c.event_type == kind)
            await exchange.publish(aio_pika.Message(body), routing_key=routing_key)
            sent += 1
            await asyncio.sleep(1 / STREAM_PER_SECOND)

    publisher = asyncio.create_task(publish())
    try:
        rate, p50, _ = await during()
    finally:
        publisher.cancel()
        await connection.close()
    return rate, p50, sent


async def remove_broker_objects(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (settings.amqp_queue, f"{settings.amqp_queue}.dlq"):
            await channel.queue_delete(queue)
        for name in (settings.amqp_exchange, f"{settings.amqp_queue}.dlx"):
            await channel.exchange_delete(name)


def past_event(kind: str, at: datetime) -> bytes:
    payload: dict[str, object] = {"customerId": str(uuid.uuid4())}
    if kind == "booking-created":
        payload |= {
            "bookingId": str(uuid.uuid4()),
            "showroomId": str(uuid.uuid4()),
            "appointmentType": "KITCHEN_DESIGN",
            "scheduledAt": at.isoformat(),
        }
    elif kind == "payment-succeeded":
        payload |= {
            "paymentId": str(uuid.uuid4()),
            "orderId": str(uuid.uuid4()),
            "amount": "1249.50",
            "currency": "GBP",
        }
    else:
        payload |= {"requestId": str(uuid.uuid4())}
    return msgspec.json.encode(
        {
            "eventId": str(uuid.uuid4()),
            "eventType": kind,
            "timestamp": at.isoformat(),
            "version": "1.0",
            "payload": payload,
        }
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking", type=int, default=10_000_000)
    parser.add_argument("--domain", type=int, default=1_000_000)
    parser.add_argument("--view-seconds", type=float, default=20.0)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"chdb://{Path(tmp) / 'ch'}"
        warehouse = Warehouse(url, "bench")
        await warehouse.open()
        await migrate(warehouse)
        loading = time.perf_counter()
        step = 2_000_000
        for first in range(0, args.tracking, step):
            await warehouse.command(
                TRACKING,
                {
                    "now": now,
                    "days": DAYS,
                    "first": first,
                    "count": min(step, args.tracking - first),
                },
            )
        await warehouse.command(DOMAIN, {"now": now, "days": DAYS, "count": args.domain})
        await warehouse.command("OPTIMIZE TABLE tracking_events_hourly FINAL")
        loaded = time.perf_counter() - loading
        rows = await warehouse.scalar("SELECT count() FROM tracking_events")
        domain_rows = await warehouse.scalar("SELECT count() FROM analytics_events")

        end = widgets.ceil_hour(now)
        start = end - timedelta(days=30)

        async def from_rollups() -> None:
            await widgets.compute(warehouse, start, end, zone=ZONE, now=now)

        async def from_raw() -> None:
            await asyncio.gather(
                *(warehouse.rows(sql, {"start": start, "end": end}) for sql in RAW)
            )

        await from_rollups()
        rollup_ms, _ = await timed(from_rollups, 30)
        await from_raw()
        raw_ms, _ = await timed(from_raw, 5)
        ctx = {"job": JobContext(settings=load_settings({}), warehouse=warehouse)}
        funnel_ms, _ = await timed(lambda: recompute_funnels(ctx), 3)
        await warehouse.close()

        # The HTTP API on the same data, with the Redis cache warm.
        secret = "bench-secret-0123456789-abcdefghijklmnop"
        exchange = f"bench.{uuid.uuid4().hex[:6]}"
        settings = load_settings(
            {
                "CLICKHOUSE_URL": url,
                "CLICKHOUSE_DATABASE": "bench",
                "AUTH_JWT_SECRET": secret,
                "DOWNLOAD_SIGNING_KEY": secrets.token_urlsafe(48),
                "REDIS_URL": "redis://127.0.0.1:6379/14",
                "PORT": "8791",
                "AMQP_EXCHANGE": exchange,
                "AMQP_QUEUE": f"{exchange}.q",
            }
        )
        Sanic.test_mode = True
        app = create_app(settings, Assembly.api(settings))
        server = await app.create_server(
            host="127.0.0.1", port=8791, return_asyncio_server=True, access_log=False
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        token = jwt.encode(
            {"role": "ADMIN", "exp": int(time.time()) + 3600}, secret, algorithm="HS256"
        )
        async with httpx.AsyncClient(
            base_url="http://127.0.0.1:8791", headers={"authorization": f"Bearer {token}"}
        ) as http:
            params = {"from": start.isoformat(), "to": end.isoformat()}
            miss = await http.get("/v1/analytics/dashboard", params=params)
            assert miss.headers["x-cache"] == "MISS", miss.text

            async def cached() -> None:
                hit = await http.get("/v1/analytics/dashboard", params=params)
                assert hit.headers["x-cache"] == "HIT"

            cached_ms, _ = await timed(cached, 200)
            services = app.ctx.services
            consumer = DomainEventConsumer.for_settings(
                settings, services.runtime.warehouse, services.runtime.redis
            )
            consumer.start()
            await asyncio.wait_for(consumer.connected.wait(), timeout=10)
            quiet = await viewing(http, end, seconds=args.view_seconds)
            streamed = await streaming(
                settings, lambda: viewing(http, end, seconds=args.view_seconds)
            )

            async def drop_all() -> None:
                while True:
                    await asyncio.sleep(0.2)  # the consumer's batch interval
                    await dashboard_cache.invalidate(services.runtime.redis)

            dropping = asyncio.create_task(drop_all())
            previous = await streaming(
                settings, lambda: viewing(http, end, seconds=args.view_seconds)
            )
            dropping.cancel()
            await consumer.close()
            await services.runtime.redis.flushdb()
            await remove_broker_objects(settings)
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()

    r50, r95 = quantiles(rollup_ms)
    b50, b95 = quantiles(raw_ms)
    c50, c95 = quantiles(cached_ms)
    print(f"loaded {rows:,} browser and {domain_rows:,} domain events in {loaded:.0f} s")
    print(f"dashboard, last 30 days, from rollups (uncached): p50 {r50:.1f} ms, p95 {r95:.1f} ms")
    print(f"same widgets by scanning raw events (baseline):   p50 {b50:.1f} ms, p95 {b95:.1f} ms")
    print(f"rollups vs raw scan: {b50 / r50:.0f}x faster")
    print(f"through the API, Redis cache warm:                p50 {c50:.2f} ms, p95 {c95:.2f} ms")
    print(f"recompute-funnels, 30 days, both funnels: {statistics.median(funnel_ms) / 1000:.2f} s")
    print("admins viewing 4 recent ranges (today, 7, 30 days, this month), cache hit rate, p50:")
    for label, (rate, p50, events) in (
        ("no domain events", quiet),
        ("past-day events streaming (selective)", streamed),
        ("past-day events, previous drop-all policy", previous),
    ):
        print(f"  {label:<44} {rate:6.1%}  p50 {p50:7.2f} ms  ({events} events stored)")


if __name__ == "__main__":
    asyncio.run(main())
