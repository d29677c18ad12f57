"""An erasure at scale: ten million browser events over 30 days (bench/stats.py's traffic), one
user whose rows are spread over all 30 days (a session a day, with orders), 4 days archived of
which 2 are purged from ClickHouse, all holding the user. Prints the erasure's duration, what
it removed, and as the baseline measured in the same run one scan of the raw table for the
user's rows (the least any erasure must read); the ratio is erasure / baseline.

    .venv/bin/python -m bench.erasure [--events 10000000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

from arq.connections import ArqRedis

from bench.stats import DAYS, EVENTS
from core.clickhouse import Warehouse
from core.migrations import migrate
from core.storage import FileStorage
from materialized import archive
from materialized.erasure import Erasure, ErasureStatus, Record, user_hash
from tracked.retry_queue import RetryQueue

USER = uuid.UUID("00000000-0000-4000-b000-00000000abcd")  # no generated user
# The user's own visits: one session a day, five events each, and an order every third day.
USER_EVENTS = """
INSERT INTO tracking_events (event_id, event_type, session_id, user_id, received_at,
    client_timestamp, occurred_at, url, device_type, browser, os, country, city, session_seq,
    session_started_at, landing_page, properties)
WITH intDiv(number, 5) AS day,
     {now:DateTime64(3, 'UTC')} - toIntervalDay(day + 1) + toIntervalMinute(number % 5) AS at
SELECT generateUUIDv4(number), ['PAGEVIEW', 'PAGEVIEW', 'PRODUCT_VIEW', 'ADD_TO_WISHLIST',
    'BOOKING_START'][1 + number % 5],
    toUUID(concat('00000000-0000-4000-a000-', leftPad(hex(day), 12, '0'))),
    if(number % 5 >= 2, {user:UUID}, NULL), at, at, at,
    'https://www.lomashwood.co.uk/kitchens/k7', 'desktop', 'Chrome', 'Windows', 'GB', 'London',
    number % 5 + 1, at - toIntervalMinute(number % 5), 'https://www.lomashwood.co.uk/', '{}'
FROM numbers({days:UInt64} * 5)
"""
ORDERS = """
INSERT INTO analytics_events (event_id, event_type, routing_key, version, occurred_at,
    received_at, customer_id, order_id, amount, currency, payload)
SELECT generateUUIDv4(number), 'order-created', 'lomash.orders.created', '1.0',
    {now:DateTime64(3, 'UTC')} - toIntervalDay(number * 3 + 1),
    {now:DateTime64(3, 'UTC')} - toIntervalDay(number * 3 + 1), {user:UUID}, generateUUIDv4(),
    1499, 'GBP', '{}'
FROM numbers(intDiv({days:UInt64}, 3))
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(f"chdb://{Path(tmp) / 'ch'}", "bench")
        await warehouse.open()
        await migrate(warehouse)
        for first in range(0, args.events, 1_000_000):
            count = min(1_000_000, args.events - first)
            await warehouse.command(
                EVENTS, {"now": now, "days": DAYS, "first": first, "count": count}
            )
        parameters = {"now": now, "days": DAYS, "user": USER}
        await warehouse.command(USER_EVENTS, parameters)
        await warehouse.command(ORDERS, parameters)
        storage = FileStorage(Path(tmp) / "objects", secrets.token_bytes(32), "")
        days = [(now - timedelta(days=d)).date() for d in (29, 28, 27, 26)]
        for day in days:
            await archive.archive_day(warehouse, storage, day)
        purged = await archive.purge(warehouse, storage, days[1] + timedelta(days=91))
        print(
            f"{args.events:,} events over {DAYS} days; archived {len(days)} days, purged"
            f" {len(purged)} of them"
        )

        started = time.perf_counter()
        await warehouse.scalar(
            "SELECT count() FROM tracking_events WHERE user_id = {user:UUID}", {"user": USER}
        )
        baseline = time.perf_counter() - started

        redis = ArqRedis.from_url("redis://127.0.0.1:6379/14")
        record = Record(
            erasure_id=uuid.uuid4(),
            user_hash=user_hash(secrets.token_bytes(32), USER),
            requested_by="bench",
            requested_at=datetime.now(UTC),
        )
        erasure = Erasure(
            warehouse,
            storage,
            redis,
            RetryQueue(redis),
            zoneinfo.ZoneInfo("Europe/London"),
            record,
            USER,
        )
        started = time.perf_counter()
        again = await erasure.run(datetime.now(UTC))
        took = time.perf_counter() - started
        await redis.aclose()
        await warehouse.close()
    assert again is None and record.status is ErasureStatus.DONE, record
    print(f"erasure: {took:.1f} s ({record.progress.passes} pass); removed {record.removed}")
    print(
        f"baseline (one scan of the raw table for the user): {baseline * 1000:.0f} ms;"
        f" erasure / baseline {took / baseline:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
