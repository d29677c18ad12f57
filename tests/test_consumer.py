"""Domain events from RabbitMQ: every routing key stored once, counters kept, bad messages
dead-lettered with a reason, ClickHouse and broker faults survived."""

import asyncio
import decimal
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import msgspec
import pytest
from redis.asyncio import Redis

from consumers.consumer import DomainEventConsumer
from core.settings import Settings
from materialized import counters, dashboard_cache
from materialized.warehouse import Warehouse
from tests.conftest import AMQP_URL, take, wait_for
from tests.domain_events import MAKERS, envelope, order_created, payment_succeeded


class Platform:
    """The other services: a publisher on its own connection, as a separate client would be."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, routing_key: str, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        await self.exchange.publish(
            aio_pika.Message(data, content_type="application/json"), routing_key=routing_key
        )


@pytest.fixture
async def platform(exchange_name: str) -> AsyncIterator[Platform]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    yield Platform(exchange)
    await connection.close()


@pytest.fixture
async def consumer(
    settings: Settings, warehouse: Warehouse, redis: Redis, platform: Platform
) -> AsyncIterator[DomainEventConsumer]:
    running = DomainEventConsumer(
        amqp_url=settings.amqp_url,
        exchange=settings.amqp_exchange,
        warehouse=warehouse,
        redis=redis,
        report_timezone=settings.report_timezone,
        queue=settings.amqp_queue,
        batch_size=100,
        flush_ms=50,
    )
    running.start()
    await asyncio.wait_for(running.connected.wait(), timeout=10)
    yield running
    await running.close()


async def stored_count(warehouse: Warehouse) -> int:
    return int(await warehouse.scalar("SELECT count() FROM analytics_events"))


async def until_stored(warehouse: Warehouse, n: int, within: float = 20) -> None:
    async def enough() -> bool:
        return await stored_count(warehouse) >= n

    await wait_for(enough, within=within)
    await asyncio.sleep(0.2)  # anything extra would arrive now


async def dead_letters(
    consumer: DomainEventConsumer, n: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(consumer.dead_letter_queue, durable=True)
        return await take(queue, n)


async def test_every_routing_key_is_stored_with_its_facts(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    sent = {key: make() for key, make in MAKERS.items()}
    for key, body in sent.items():
        await platform.publish(key, body)
    await until_stored(warehouse, len(sent))
    rows = {r["routing_key"]: r for r in await warehouse.dicts("SELECT * FROM analytics_events")}
    assert set(rows) == set(MAKERS)
    for key, body in sent.items():
        row = rows[key]
        assert str(row["event_id"]) == body["eventId"]
        assert row["event_type"] == body["eventType"]
        assert msgspec.json.decode(row["payload"]) == body["payload"]  # extra fields kept
    order = rows["lomash.orders.created"]
    payload = sent["lomash.orders.created"]["payload"]
    assert str(order["order_id"]) == payload["orderId"]
    assert str(order["customer_id"]) == payload["customerId"]
    assert order["amount"] == decimal.Decimal("1249.50")
    assert (order["currency"], order["quantity"]) == ("GBP", 3)
    payment = rows["lomash.payments.succeeded"]
    assert payment["amount"] == decimal.Decimal("1249.5")
    assert str(payment["payment_id"]) == sent["lomash.payments.succeeded"]["payload"]["paymentId"]
    booking = rows["lomash.bookings.created"]
    assert booking["appointment_type"] == "KITCHEN_DESIGN"
    assert booking["scheduled_at"].replace(tzinfo=UTC) == datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    assert str(booking["showroom_id"]) == sent["lomash.bookings.created"]["payload"]["showroomId"]
    assert rows["lomash.customers.review.created"]["rating"] == 5
    assert rows["lomash.inventory.updated"]["quantity"] == 14
    assert rows["lomash.brochure.request.submitted"]["customer_id"] is None


async def test_amounts_are_stored_exactly(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    amounts = ["0.10", "0.20", 1249.99, "999999999.123456", 3]
    for amount in amounts:
        await platform.publish("lomash.payments.succeeded", payment_succeeded(amount=amount))
    await until_stored(warehouse, len(amounts))
    total = await warehouse.scalar("SELECT sum(amount) FROM analytics_events")
    assert total == sum(decimal.Decimal(str(a)) for a in amounts)


async def test_counters_views_and_redis_are_kept_current_and_cache_dropped(
    consumer: DomainEventConsumer,
    platform: Platform,
    warehouse: Warehouse,
    redis: Redis,
    settings: Settings,
) -> None:
    await redis.set(dashboard_cache.cache_key("a", "b"), "{}")
    await redis.sadd(dashboard_cache.INDEX_KEY, dashboard_cache.cache_key("a", "b"))
    for body in (payment_succeeded("100.10"), payment_succeeded("0.90")):
        await platform.publish("lomash.payments.succeeded", body)
    for key in (
        "lomash.bookings.created",
        "lomash.bookings.created",
        "lomash.brochure.request.submitted",
        "lomash.newsletter.subscription.created",
    ):
        await platform.publish(key, MAKERS[key]())
    await until_stored(warehouse, 6)
    hourly = {
        r["event_type"]: r
        for r in await warehouse.dicts(
            "SELECT event_type, sum(events) AS events, sum(amount) AS amount"
            " FROM domain_events_hourly GROUP BY event_type"
        )
    }
    assert hourly["payment-succeeded"]["events"] == 2
    assert hourly["payment-succeeded"]["amount"] == decimal.Decimal("101.00")
    assert hourly["booking-created"]["events"] == 2
    assert hourly["brochure-request-submitted"]["events"] == 1
    assert hourly["newsletter-subscription-created"]["events"] == 1
    import zoneinfo

    today = datetime.now(zoneinfo.ZoneInfo(settings.report_timezone)).date()
    live = await counters.read(redis, today)
    assert live["payment-succeeded"] == 2
    assert live["revenue:GBP"] == 101_000_000  # millionths of a pound
    assert live["booking-created"] == 2
    assert await redis.exists(dashboard_cache.cache_key("a", "b")) == 0


async def test_a_redelivered_or_republished_event_is_counted_once(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse, redis: Redis
) -> None:
    body = order_created()
    await platform.publish("lomash.orders.created", body)
    await until_stored(warehouse, 1)
    await platform.publish("lomash.orders.created", body)  # republished later
    for _ in range(3):  # and several times within one batch
        await platform.publish("lomash.orders.created", body)
    other = order_created()
    await platform.publish("lomash.orders.created", other)
    await until_stored(warehouse, 2)
    assert await stored_count(warehouse) == 2
    assert await warehouse.scalar("SELECT sum(events) FROM domain_events_hourly") == 2
    live = await redis.hgetall(counters.key(datetime.now(UTC).date()))
    assert int(live.get(b"order-created", 0)) == 2


BAD = [
    pytest.param("lomash.orders.created", b"{not json", "malformed JSON", id="not-json"),
    pytest.param(
        "lomash.orders.created",
        msgspec.json.encode({k: v for k, v in order_created().items() if k != "eventId"}),
        "missing required field `eventId`",
        id="no-event-id",
    ),
    pytest.param(
        "lomash.payments.succeeded",
        msgspec.json.encode(order_created()),
        "does not match routing key",
        id="wrong-event-type",
    ),
    pytest.param(
        "lomash.bookings.created",
        msgspec.json.encode(envelope("booking-created", {"bookingId": str(uuid.uuid4())})),
        "`customerId`",
        id="payload-missing-field",
    ),
    pytest.param(
        "lomash.orders.created",
        msgspec.json.encode(order_created(total="-5.00")),
        "negative amount",
        id="negative-amount",
    ),
    pytest.param(
        "lomash.orders.created",
        msgspec.json.encode(order_created(total="1.0000001")),
        "more than 6 decimal places",
        id="too-precise",
    ),
    pytest.param(
        "lomash.customers.review.created",
        msgspec.json.encode(
            envelope(
                "review-created",
                {
                    "reviewId": "r-1",
                    "productId": str(uuid.uuid4()),
                    "customerId": str(uuid.uuid4()),
                    "rating": 5,
                },
            )
        ),
        "Invalid UUID",
        id="bad-uuid",
    ),
    pytest.param(
        "lomash.customers.review.created",
        msgspec.json.encode(
            envelope(
                "review-created",
                {
                    "reviewId": str(uuid.uuid4()),
                    "productId": str(uuid.uuid4()),
                    "customerId": str(uuid.uuid4()),
                    "rating": 6,
                },
            )
        ),
        "<= 5",
        id="rating-out-of-range",
    ),
]


@pytest.mark.parametrize(("routing_key", "body", "reason"), BAD)
async def test_bad_messages_go_to_the_dead_letter_queue_with_the_reason(
    consumer: DomainEventConsumer,
    platform: Platform,
    warehouse: Warehouse,
    routing_key: str,
    body: bytes,
    reason: str,
) -> None:
    await platform.publish(routing_key, body)
    good = order_created()
    await platform.publish("lomash.orders.created", good)  # the consumer carries on
    (dead,) = await dead_letters(consumer, 1)
    assert dead.body == body
    headers = dead.headers or {}
    assert reason in str(headers["x-reason"])
    assert headers["x-original-routing-key"] == routing_key
    await until_stored(warehouse, 1)
    assert [str(r[0]) for r in await warehouse.rows("SELECT event_id FROM analytics_events")] == [
        good["eventId"]
    ]


@pytest.mark.timeout(60)
async def test_clickhouse_refusing_writes_keeps_messages_unacked_until_stored_once(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    await warehouse.command("DETACH TABLE analytics_events")
    sent = [order_created() for _ in range(250)]
    for body in sent:
        await platform.publish("lomash.orders.created", body)
    await asyncio.sleep(2)  # the consumer is retrying, holding every message unacked
    await warehouse.command("ATTACH TABLE analytics_events")
    await until_stored(warehouse, 250, within=40)
    ids = sorted(str(r[0]) for r in await warehouse.rows("SELECT event_id FROM analytics_events"))
    assert ids == sorted(b["eventId"] for b in sent)


def _close_connections_named(name: str) -> int:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        if name in line:
            connection = line.split("\t", 1)[0]
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", connection, "test: broker fault"],
                check=True,
                timeout=30,
                capture_output=True,
            )
            closed += 1
    return closed


@pytest.mark.timeout(90)
async def test_connection_lost_mid_stream_reconnects_and_stores_each_once(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    sent = [order_created() for _ in range(600)]

    async def stream() -> None:
        for i, body in enumerate(sent):
            await platform.publish("lomash.orders.created", body)
            if i % 50 == 0:
                await asyncio.sleep(0.05)

    publishing = asyncio.create_task(stream())
    await asyncio.sleep(0.3)
    closed = await asyncio.to_thread(_close_connections_named, f"analytics:{consumer.queue_name}")
    assert closed == 1
    await publishing
    for body in sent[:100]:  # and the platform replays some
        await platform.publish("lomash.orders.created", body)
    await until_stored(warehouse, 600, within=60)
    assert await stored_count(warehouse) == 600
    assert await warehouse.scalar("SELECT uniqExact(event_id) FROM analytics_events") == 600
    assert await warehouse.scalar("SELECT sum(events) FROM domain_events_hourly") == 600
