"""What follows a stored batch of domain events: live counters kept and reconciled after a
Redis outage, cached dashboards dropped only where the events change them, late events
queueing one recompute of what they change."""

import asyncio
import decimal
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from consumers.consumer import DomainEventConsumer
from core import keys
from core.clickhouse import Warehouse
from core.jobs import Job
from core.settings import Settings
from materialized import counters, coverage, dashboard_cache
from tests.conftest import (
    Platform,
    PrivateRedis,
    counter,
    started_consumer,
    stored_count,
    until_stored,
    wait_for,
)
from tests.domain_events import MAKERS, order_created, payment_succeeded


async def test_counters_views_and_redis_are_kept_current_and_cache_dropped(
    consumer: DomainEventConsumer,
    platform: Platform,
    warehouse: Warehouse,
    redis: Redis,
    settings: Settings,
) -> None:
    now = datetime.now(UTC)
    long_ago = (now - timedelta(days=400), now - timedelta(days=399))
    await dashboard_cache.remember(redis, await dashboard_cache.begin(redis, *long_ago), b"{}")
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
    today = datetime.now(zoneinfo.ZoneInfo(settings.report_timezone)).date()
    live = await counters.read(redis, today)
    assert live["payment-succeeded"] == 2
    assert live["revenue:GBP"] == 101_000_000  # millionths of a pound
    assert live["booking-created"] == 2
    # Events of today change every cached answer's today/week/month tiles.
    assert await redis.hlen(keys.DASHBOARD_CACHE_INDEX) == 0
    assert [k async for k in redis.scan_iter("dashboard:snapshot:2*")] == []


@pytest.mark.timeout(90)
async def test_redis_killed_mid_stream_loses_nothing_and_counters_are_reconciled(
    settings: Settings, warehouse: Warehouse, platform: Platform, private_redis: PrivateRedis
) -> None:
    redis = ArqRedis.from_url(private_redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    failures_before = counter("redis_unavailable", operation="live_counters")
    running = await started_consumer(settings, warehouse, redis, batch_size=50)
    try:
        sent = [payment_succeeded(amount="10.50") for _ in range(300)]
        for i, body in enumerate(sent):
            await platform.publish("lomash.payments.succeeded", body)
            if i == 100:
                await until_stored(warehouse, 100)
                private_redis.kill()
            if i == 200:
                await asyncio.sleep(1.0)  # batches go on being stored while Redis is away
                await private_redis.start()
            if i % 20 == 0:
                await asyncio.sleep(0.05)
        await until_stored(warehouse, 300, within=40)
        assert await stored_count(warehouse) == 300
        status = running.status()
        assert status.alive and status.connected and status.unacked == 0
        assert counter("redis_unavailable", operation="live_counters") > failures_before
        zone = zoneinfo.ZoneInfo(settings.report_timezone)
        today = datetime.now(zone).date()
        assert (await counters.read(redis, today)).get("payment-succeeded", 0) < 300
        await counters.reconcile(redis, warehouse, zone, today)
        live = await counters.read(redis, today)
        assert live["payment-succeeded"] == 300
        assert live["revenue:GBP"] == 300 * 10_500_000
        assert await redis.scard(keys.COUNTERS_STALE) == 0
    finally:
        await running.close()
        await redis.aclose()


async def test_late_events_drop_only_the_cached_answers_they_change(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse, redis: Redis
) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old = now - timedelta(days=80)
    ranges = {
        "old": (old - timedelta(days=1), old + timedelta(days=1)),
        "older": (old - timedelta(days=10), old - timedelta(days=9)),
        "recent": (now - timedelta(days=50), now - timedelta(days=45)),
    }
    for start, end in ranges.values():
        await dashboard_cache.remember(redis, await dashboard_cache.begin(redis, start, end), b"{}")

    async def cached() -> set[str]:
        listed = {k.decode() for k in await redis.hkeys(keys.DASHBOARD_CACHE_INDEX)}
        return {
            name
            for name, (start, end) in ranges.items()
            if keys.dashboard_cache(start.isoformat(), end.isoformat()) in listed
            and await redis.exists(keys.dashboard_cache(start.isoformat(), end.isoformat()))
        }

    booking = MAKERS["lomash.bookings.created"]()
    booking["timestamp"] = old.isoformat()
    await platform.publish("lomash.bookings.created", booking)
    await until_stored(warehouse, 1)
    assert await cached() == {"older", "recent"}
    # A first order decides "new or returning" in every range after it, not only its own.
    order = order_created()
    order["timestamp"] = (old - timedelta(days=5)).isoformat()
    await platform.publish("lomash.orders.created", order)
    await until_stored(warehouse, 2)
    assert await cached() == {"older"}


async def test_late_events_enqueue_one_recompute_of_what_they_change(
    consumer: DomainEventConsumer, platform: Platform, warehouse: Warehouse, redis: Redis
) -> None:
    now = datetime.now(UTC)
    await coverage.record(redis, Job.RECOMPUTE_FUNNELS, now - timedelta(days=30), now)
    await coverage.record(redis, Job.REBUILD_DASHBOARDS, now - timedelta(days=30), now)
    bookings = [MAKERS["lomash.bookings.created"]() for _ in range(3)]
    for body in bookings:  # occurred now: after both were computed, so not late
        await platform.publish("lomash.bookings.created", body)
    await until_stored(warehouse, 3)
    assert await redis.zcard("arq:queue") == 0
    for i in range(30):  # late orders, over several batches
        body = order_created()
        body["timestamp"] = (now - timedelta(hours=2, minutes=i)).isoformat()
        await platform.publish("lomash.orders.created", body)
        if i % 10 == 0:
            await asyncio.sleep(0.2)
    await until_stored(warehouse, 33)
    queued = sorted(k.decode() for k in await redis.zrange("arq:queue", 0, -1))
    assert [q.rsplit(":", 1)[0] for q in queued] == [
        "rebuild_dashboards:late",
        "recompute_funnels:late",
    ]
    # The funnels run starts (and so reads from here on): a late order stored after that is
    # not in what it reads, so it queues the next run; the dashboards run has not started.
    await coverage.starting(redis, Job.RECOMPUTE_FUNNELS)
    body = order_created()
    body["timestamp"] = (now - timedelta(hours=3)).isoformat()
    await platform.publish("lomash.orders.created", body)
    await until_stored(warehouse, 34)
    await wait_for(lambda: _queued_count(redis, 3), within=10)
    queued = sorted(k.decode() for k in await redis.zrange("arq:queue", 0, -1))
    assert [q.rsplit(":", 1)[0] for q in queued] == [
        "rebuild_dashboards:late",
        "recompute_funnels:late",
        "recompute_funnels:late",
    ]


async def _queued_count(redis: Redis, n: int) -> bool:
    return await redis.zcard("arq:queue") >= n
