"""The ledger of accepted tracking events (tracked/accounting.py, GET /v1/analytics/ingest):
per hour, accepted = stored + filtered + lost + pending, exactly, through duplicates, a
ClickHouse refusal (queued, then stored by the retry job), rows refused for good and a
crash replay; lags from 202 to queryable and to announced."""

import itertools
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from core.clickhouse import Warehouse
from materialized.ingest_ledger import quantile
from tests.conftest import Running, event, job_of, wait_for
from tests.test_dashboard_api import bearer, token
from tracked import accounting
from tracked.retry_queue import RetryQueue
from tracked.row import TrackingRow
from workers import jobs

INGEST = "/v1/analytics/ingest"


def test_lags_fall_in_buckets_12_percent_apart() -> None:
    bounds = accounting.LAG_BOUNDS_MS
    assert bounds[0] == 1 and bounds[-1] > 24 * 3600 * 1000
    assert all(b / a <= 1.13 or b - a <= 5 for a, b in itertools.pairwise(bounds))
    assert accounting.lag_bucket(0) == 1 and accounting.lag_bucket(100) == 100
    assert accounting.lag_bucket(101) == 112
    assert accounting.lag_bucket(10**12) == bounds[-1]
    assert quantile(Counter({10: 98, 1000: 2}), 0.5) == 10
    assert quantile(Counter({10: 98, 1000: 2}), 0.99) == 1000
    assert quantile(Counter(), 0.5) is None


def reconciled(hours: list[dict[str, Any]]) -> bool:
    return all(
        h["accepted"]
        == h["stored"] + sum(h["filtered"].values()) + sum(h["lost"].values()) + h["pending"]
        for h in hours
    )


def this_hour() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "from": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z"),
        "to": (now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:00:00Z"),
    }


async def ledger(server: Running) -> dict[str, Any]:
    resp = await server.http.get(INGEST, params=this_hour(), headers=bearer(token()))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert reconciled(body["hours"]), body
    return body


def totals(body: dict[str, Any]) -> dict[str, Any]:
    hours = body["hours"]
    return {
        "accepted": sum(h["accepted"] for h in hours),
        "stored": sum(h["stored"] for h in hours),
        "duplicate": sum(h["filtered"].get("duplicate", 0) for h in hours),
        "refused": sum(h["lost"].get("refused", 0) for h in hours),
        "pending": sum(h["pending"] for h in hours),
    }


async def test_duplicates_a_refusal_and_the_retry_reconcile_hour_by_hour(
    server: Running, warehouse: Warehouse, redis: Redis
) -> None:
    first = [event(eventId=str(uuid.uuid4())) for _ in range(30)]
    assert (await server.http.post("/v1/analytics/track", json=first)).status_code == 202
    again = [*first[:5], *[event() for _ in range(10)]]  # five retried by their client
    assert (await server.http.post("/v1/analytics/track", json=again)).status_code == 202
    bad = [event(eventType="NOPE")]  # refused at the door: never accepted
    assert (await server.http.post("/v1/analytics/track", json=bad)).status_code == 400
    await server.drain()
    assert totals(await ledger(server)) == {
        "accepted": 45,
        "stored": 40,
        "duplicate": 5,
        "refused": 0,
        "pending": 0,
    }

    # ClickHouse refuses the raw table: the batch waits in the retry queue, counted pending.
    await warehouse.command("DETACH TABLE tracking_events")
    try:
        later = [event() for _ in range(20)]
        assert (await server.http.post("/v1/analytics/track", json=later)).status_code == 202
        await server.drain()
        assert await RetryQueue(redis).depth() >= 1
        assert totals(await ledger(server))["pending"] == 20
    finally:
        await warehouse.command("ATTACH TABLE tracking_events")
    await jobs.retry_failed_batches({"job": job_of(server, warehouse)})
    body = await ledger(server)
    assert totals(body) == {
        "accepted": 65,
        "stored": 60,
        "duplicate": 5,
        "refused": 0,
        "pending": 0,
    }
    assert totals(body)["stored"] == await warehouse.scalar("SELECT count() FROM tracking_events")
    lag = body["lag"]
    assert lag["queryableP50Ms"] is not None and lag["queryableP99Ms"] >= lag["queryableP50Ms"]

    # The relay's confirmations: every stored event announced, its lag counted.
    async def announced() -> bool:
        return (await ledger(server))["lag"]["announcedP50Ms"] is not None

    await wait_for(announced, within=20)


async def test_rows_refused_for_their_data_are_counted_lost(
    server: Running, warehouse: Warehouse
) -> None:
    """A value the schema takes and the column cannot: refused for good, dead-lettered."""
    await warehouse.command(
        "ALTER TABLE tracking_events ADD CONSTRAINT not_here CHECK url NOT LIKE '%/not-here%'"
    )
    beacons = [event() for _ in range(4)]
    beacons[0]["metadata"]["url"] = "https://www.lomashwood.co.uk/not-here"
    assert (await server.http.post("/v1/analytics/track", json=beacons)).status_code == 202
    await server.drain()
    assert totals(await ledger(server)) == {
        "accepted": 4,
        "stored": 3,
        "duplicate": 0,
        "refused": 1,
        "pending": 0,
    }


async def test_a_batch_placed_twice_is_counted_once(server: Running, warehouse: Warehouse) -> None:
    """The same ledger lines under the same token (a batch replayed after a crash) count once."""
    now = datetime.now(UTC)
    rows = [
        TrackingRow(
            event_id=uuid.uuid4(),
            event_type="PAGEVIEW",
            session_id=uuid.uuid4(),
            user_id=None,
            received_at=now,
            client_timestamp=None,
            occurred_at=now,
            url="https://www.lomashwood.co.uk/",
        )
        for _ in range(3)
    ]
    for _ in range(2):  # the second with another lag: the token, not the bytes, decides
        tally = accounting.placed(rows, rows, rows, [], False, datetime.now(UTC))
        await warehouse.insert_lines(
            accounting.TABLE, accounting.COLUMNS, tally.lines(), dedup_token="replayed:ledger"
        )
    assert totals(await ledger(server))["accepted"] == 3


def test_a_line_that_does_not_decode_as_a_row_still_has_its_receive_time() -> None:
    at = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    lines = (
        b'["a","PAGEVIEW","s",null,"2026-12-03T08:15:00.123Z",null,"x","u",1]\n'
        b'["a","PAGEVIEW","s",null,"not a time"]\n'
        b"not json\n"
    )
    assert accounting.received_times(lines, at) == [
        datetime(2026, 12, 3, 8, 15, 0, 123000, tzinfo=UTC),
        at,
        at,
    ]
    tally = accounting.retried(accounting.received_times(lines, at), [], [at], at)
    assert tally.counts[(datetime(2026, 12, 3, 8, tzinfo=UTC), "queued", "")] == -1
    assert tally.counts[(datetime(2026, 12, 3, 10, tzinfo=UTC), "lost", "refused")] == 1
