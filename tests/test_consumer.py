"""Domain events from RabbitMQ: every routing key stored once, bad messages dead-lettered
with a reason, values no column holds isolated, ClickHouse and broker faults survived, a
failing loop restarted."""

import asyncio
import decimal
import subprocess
import uuid
import zoneinfo
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from consumers.consumer import DomainEventConsumer
from core import keys
from core.clickhouse import Warehouse
from core.settings import Settings
from materialized import counters
from tests.conftest import (
    Platform,
    Running,
    consumer_of,
    counter,
    dead_letters,
    queue_depth,
    stored_count,
    until_stored,
    wait_for,
)
from tests.domain_events import MAKERS, envelope, order_created, payment_succeeded


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


async def test_float_sums_a_node_service_sends_are_rounded_to_the_column_not_refused(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    """What JavaScript's doubles give (`129.99 + 49.99` is 179.98000000000002), published as
    JSON numbers as JSON.stringify writes them (shortest round trip, as Python's repr does):
    stored at six places, rounded half-even, and counted; never dead-lettered."""
    sums = {0.1 + 0.2: "0.3", 129.99 + 49.99: "179.98", 3 * 19.99: "59.97"}
    assert "179.98000000000002" in msgspec.json.encode(129.99 + 49.99).decode()
    rounded = counter("analytics_amounts_rounded")
    dead = counter("domain_events_dead_lettered", routing_key="lomash.orders.created")
    for total in sums:
        await platform.publish("lomash.orders.created", order_created(total=total))
    half_even = payment_succeeded(amount="0.0000025")  # a tie: to the even 0.000002
    await platform.publish("lomash.payments.succeeded", half_even)
    await until_stored(warehouse, len(sums) + 1)
    stored = sorted(r[0] for r in await warehouse.rows("SELECT amount FROM analytics_events"))
    assert stored == sorted(
        [decimal.Decimal(v) for v in sums.values()] + [decimal.Decimal("0.000002")]
    )
    # 0.1 + 0.2, 129.99 + 49.99 and the tie; 3 * 19.99 comes out 59.97 exactly.
    assert counter("analytics_amounts_rounded") - rounded == 3
    assert counter("domain_events_dead_lettered", routing_key="lomash.orders.created") == dead


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
    live = await redis.hgetall(keys.counters(datetime.now(UTC).date()))
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
        "lomash.content.blog.published",
        msgspec.json.encode(
            envelope(
                "blog-published",
                {"blogId": str(uuid.uuid4()), "slug": "s", "title": "t", "body": "x" * 1_100_000},
            )
        ),
        "at most 1048576",
        id="over-1-MiB",
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


def _inventory(quantity: int, **overrides: Any) -> dict[str, Any]:
    return envelope(
        "inventory-updated", {"productId": str(uuid.uuid4()), "quantity": quantity}, **overrides
    )


def _order_of(quantities: list[int]) -> dict[str, Any]:
    body = order_created()
    body["payload"]["items"] = [
        {"productId": str(uuid.uuid4()), "quantity": q, "unitPrice": "1.00"} for q in quantities
    ]
    return body


# Values the schema accepts but no column holds: each must be refused, never stored as another.


UNHOLDABLE = [
    ("lomash.inventory.updated", _inventory(10**19), "column quantity: 10000000000000000000"),
    ("lomash.inventory.updated", _inventory(-(2**63) - 1), "does not fit Int64"),
    ("lomash.orders.created", _order_of([2**62, 2**62]), "column quantity"),
    (
        "lomash.payments.succeeded",
        payment_succeeded(amount="100000000000000000000000000000000"),
        "must be below 10^32",
    ),
    ("lomash.payments.succeeded", payment_succeeded(amount=1e40), "below 10^32"),
    (
        "lomash.inventory.updated",
        _inventory(1, timestamp="2400-01-01T00:00:00Z"),
        "column occurred_at",
    ),
    ("lomash.inventory.updated", _inventory(1, version="v" * 500), "column version"),
]


async def test_values_no_column_can_hold_are_dead_lettered_and_the_rest_stored(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    before = [order_created() for _ in range(3)]
    after = [order_created() for _ in range(3)]
    for body in before:
        await platform.publish("lomash.orders.created", body)
    for routing_key, body, _ in UNHOLDABLE:
        await platform.publish(routing_key, body)
    for body in after:
        await platform.publish("lomash.orders.created", body)
    dead = await dead_letters(consumer, len(UNHOLDABLE))
    reasons = {
        msgspec.json.decode(m.body)["eventId"]: str((m.headers or {})["x-reason"]) for m in dead
    }
    for _, body, reason in UNHOLDABLE:
        assert reason in reasons[body["eventId"]]
    await until_stored(warehouse, 6)
    stored = {str(r[0]) for r in await warehouse.rows("SELECT event_id FROM analytics_events")}
    assert stored == {b["eventId"] for b in before + after}
    assert await queue_depth(consumer.queue_name) == 0


async def test_rows_clickhouse_refuses_are_isolated_from_their_batch_and_dead_lettered(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse
) -> None:
    # A rule ClickHouse enforces and the consumer cannot know of: only bisecting finds them.
    await warehouse.command(
        "ALTER TABLE analytics_events ADD CONSTRAINT no_thirteen CHECK ifNull(quantity, 0) != 13"
    )
    refused_before = counter("domain_events_refused", routing_key="lomash.inventory.updated")
    sent = [_inventory(13 if i in (0, 7, 38) else i + 100) for i in range(40)]
    for body in sent:
        await platform.publish("lomash.inventory.updated", body)
    dead = await dead_letters(consumer, 3)
    assert {msgspec.json.decode(m.body)["payload"]["quantity"] for m in dead} == {13}
    for message in dead:
        reason = str((message.headers or {})["x-reason"])
        assert reason.startswith("ClickHouse refused: ") and "VIOLATED_CONSTRAINT" in reason
    await until_stored(warehouse, 37)
    quantities = sorted(r[0] for r in await warehouse.rows("SELECT quantity FROM analytics_events"))
    assert quantities == sorted(
        b["payload"]["quantity"] for b in sent if b["payload"]["quantity"] != 13
    )
    assert (
        counter("domain_events_refused", routing_key="lomash.inventory.updated") - refused_before
        == 3
    )
    assert await queue_depth(consumer.queue_name) == 0


async def test_amounts_near_the_columns_maximum_are_stored_and_counted_exactly(
    consumer: DomainEventConsumer,
    platform: Platform,
    warehouse: Warehouse,
    redis: Redis,
    settings: Settings,
) -> None:
    biggest = "99999999999999999999999999999999.999999"
    for amount in (biggest, biggest, "0.000001"):
        await platform.publish("lomash.payments.succeeded", payment_succeeded(amount=amount))
    await until_stored(warehouse, 3)
    exact = decimal.Context(prec=80)
    expected = exact.add(exact.multiply(2, decimal.Decimal(biggest)), decimal.Decimal("0.000001"))
    assert await warehouse.scalar("SELECT sum(events) FROM domain_events_hourly") == 3
    assert await warehouse.scalar("SELECT sum(amount) FROM domain_events_hourly") == expected
    today = datetime.now(zoneinfo.ZoneInfo(settings.report_timezone)).date()
    live = await counters.read(redis, today)
    assert live["revenue:GBP"] == int(expected.scaleb(6, exact))  # far past 64 bits, exact
    assert live["payment-succeeded"] == 3


async def test_a_failing_consume_loop_is_restarted_and_nothing_is_counted_twice(
    consumer: DomainEventConsumer,
    platform: Platform,
    warehouse: Warehouse,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug after the insert, before the ack: the supervisor must restart the loop, and the
    # batch, handled again, must not be stored or counted again.
    real_tally = counters.tally
    calls = 0

    def broken_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected fault")
        return real_tally(*args)

    monkeypatch.setattr(counters, "tally", broken_once)
    restarts = counter("domain_consumer_restarts")
    sent = [order_created() for _ in range(5)]
    for body in sent:
        await platform.publish("lomash.orders.created", body)
    await until_stored(warehouse, 5)

    async def restarted() -> bool:
        return counter("domain_consumer_restarts") > restarts and consumer.status().unacked == 0

    await wait_for(restarted, within=15)
    later = order_created()
    await platform.publish("lomash.orders.created", later)
    await until_stored(warehouse, 6)
    assert await stored_count(warehouse) == 6
    assert consumer.status().alive
    live = await redis.hgetall(keys.counters(datetime.now(UTC).date()))
    assert int(live[b"order-created"]) == 1  # the first batch's count is reconciled later


async def test_readiness_reports_the_consumer(server: Running) -> None:
    async def connected() -> bool:
        return bool(consumer_of(server).connected.is_set())

    await wait_for(connected)
    answer = await server.http.get("/readyz")
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["checks"]["consumer"] is True
    assert body["consumer"]["alive"] is True
    assert body["consumer"]["oldestUnackedSeconds"] >= 0
    metrics = (await server.http.get("/metrics")).text
    assert "domain_consumer_oldest_unacked_seconds" in metrics
    assert "domain_consumer_up 1.0" in metrics
    await consumer_of(server).close()
    await asyncio.sleep(2.1)  # readiness is cached for 2 s
    answer = await server.http.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["consumer"] is False
