"""The batch writer, a reader of the tracking log: a batch on size or on the timer, the session
step once per batch, the insert with the batch's token, the retry queue when ClickHouse
refuses, the batch kept in the log when the retry queue refuses too, everything placed at
shutdown."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.clickhouse import Warehouse
from ingest.tracking_log import TrackingLog, open_log
from ingest.writer import LogWriter, Prepare
from tests.conftest import counter
from tests.conftest import tracking_rows as rows
from tracked.retry_queue import RetryBatch, RetryQueue
from tracked.row import TRACKING_COLUMNS, TrackingRow


@pytest.fixture
async def tracking_log(tmp_path: Path) -> AsyncIterator[TrackingLog]:
    made = open_log(
        str(tmp_path / "log"), rows_per_segment=10, max_backlog_bytes=1 << 30, count_published=False
    )
    await made.start()
    yield made
    await made.close()
    made.release()


def keep_all() -> Prepare:
    async def prepare(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        return batch

    return prepare


def writer(
    tracking_log: TrackingLog,
    warehouse: Warehouse,
    redis: Redis,
    *,
    interval_ms: int = 600_000,
    prepare: Prepare | None = None,
) -> LogWriter:
    return LogWriter(
        tracking_log,
        warehouse,
        interval_ms=interval_ms,
        prepare=prepare or keep_all(),
        hand_off=RetryQueue(redis).push,
        dead_letter=partial(RetryQueue(redis).dead_letter, "tracking_events"),
    )


async def count(warehouse: Warehouse) -> int:
    return int(await warehouse.scalar("SELECT count() FROM tracking_events"))


async def wait_count(warehouse: Warehouse, at_least: int) -> int:
    for _ in range(200):
        if (n := await count(warehouse)) >= at_least:
            return n
        await asyncio.sleep(0.02)
    return await count(warehouse)


async def test_a_batch_is_written_once_a_segment_holds_a_batch_s_worth(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    running = writer(tracking_log, warehouse, redis, interval_ms=60_000)
    running.start()
    await tracking_log.append(rows(9))
    await asyncio.sleep(0.3)
    assert await count(warehouse) == 0  # under the size, long before the timer
    await tracking_log.append(rows(3))
    assert await wait_count(warehouse, 12) == 12  # the segment whole, at once
    await running.close()


async def test_a_batch_is_written_on_the_timer(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    running = writer(tracking_log, warehouse, redis, interval_ms=100)
    running.start()
    await tracking_log.append(rows(1))
    assert await wait_count(warehouse, 1) == 1
    await running.close()


async def test_a_timer_flush_takes_what_the_log_held_not_what_arrives_meanwhile(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    # Under steady traffic rows arrive during every insert; a flush that drained them too
    # would chain one small insert after another and pay an insert's fixed cost each time.
    batches: list[int] = []

    async def arrivals_meanwhile(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        batches.append(len(batch))
        if len(batches) <= 2:
            await tracking_log.append(rows(3))
        return batch

    placing = writer(tracking_log, warehouse, redis, prepare=arrivals_meanwhile)
    await tracking_log.append(rows(5))
    await placing.flush()
    assert batches == [5] and await count(warehouse) == 5
    assert tracking_log.unread_rows == 3  # they wait for the next tick
    await placing.flush()
    assert batches == [5, 3] and await count(warehouse) == 8
    await placing.close()  # shutdown places what arrived meanwhile
    assert batches == [5, 3, 3] and tracking_log.unread_rows == 0
    assert await count(warehouse) == 11


async def test_close_places_everything_the_log_holds(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    running = writer(tracking_log, warehouse, redis)
    running.start()
    for _ in range(25):
        await tracking_log.append(rows(100))
    await running.close()
    assert await count(warehouse) == 2500
    assert tracking_log.unread_rows == 0


async def test_what_the_session_step_keeps_is_stored_and_announced(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    accepted = rows(8)
    dropped = {row.event_id for row in accepted[::2]}

    async def drop_some(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        return [row for row in batch if row.event_id not in dropped]

    await tracking_log.append(accepted)
    await writer(tracking_log, warehouse, redis, prepare=drop_some).flush()
    assert await count(warehouse) == 4
    announced = [
        msgspec.json.decode(line)["eventId"]
        for path in sorted(tracking_log.directory.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.startswith(b"{")
    ]
    assert sorted(announced) == sorted(str(r.event_id) for r in accepted[1::2])


async def test_a_refused_batch_goes_to_the_retry_queue_with_its_token_and_lands_once(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    await warehouse.command("DETACH TABLE tracking_events")  # a real refusal
    accepted = rows(15)
    await tracking_log.append(accepted)
    await writer(tracking_log, warehouse, redis).flush()
    assert tracking_log.unread_rows == 0  # placed: the retry queue holds it
    (_, batch), *rest = await RetryQueue(redis).oldest(10)
    assert rest == [] and batch.rows == 15
    await warehouse.command("ATTACH TABLE tracking_events")
    for _ in range(2):  # a retrier that retries twice stores the batch once
        await warehouse.insert_lines(
            "tracking_events", batch.columns, batch.data, dedup_token=batch.token
        )
    assert await count(warehouse) == 15


async def test_with_clickhouse_and_the_retry_queue_refusing_the_log_keeps_the_batch(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    handed: list[RetryBatch] = []
    refusing = True

    async def hand_off(batch: RetryBatch) -> None:
        if refusing:
            raise RedisConnectionError("Redis is down")
        handed.append(batch)

    stalls = counter("tracking_writer_stalls")
    running = LogWriter(
        tracking_log,
        warehouse,
        interval_ms=50,
        prepare=keep_all(),
        hand_off=hand_off,
        dead_letter=partial(RetryQueue(redis).dead_letter, "tracking_events"),
        max_backoff_s=0.2,
    )
    running.start()
    await warehouse.command("DETACH TABLE tracking_events")
    accepted = rows(6)
    await tracking_log.append(accepted)
    await asyncio.sleep(1.0)
    assert counter("tracking_writer_stalls") > stalls
    assert tracking_log.unread_rows == 6 and handed == []
    await warehouse.command("ATTACH TABLE tracking_events")
    assert await wait_count(warehouse, 6) == 6
    refusing = False
    await running.close()
    assert tracking_log.unread_rows == 0 and handed == []
    assert await count(warehouse) == 6


async def test_same_dedup_token_is_stored_once(warehouse: Warehouse) -> None:
    data = msgspec.json.Encoder().encode_lines(rows(5))
    token = uuid.uuid4().hex
    await warehouse.insert_lines("tracking_events", TRACKING_COLUMNS, data, dedup_token=token)
    # A retry after a timeout whose first attempt did land: same token, stored once.
    await warehouse.insert_lines("tracking_events", TRACKING_COLUMNS, data, dedup_token=token)
    assert await count(warehouse) == 5
    await warehouse.insert_lines(
        "tracking_events", TRACKING_COLUMNS, data, dedup_token=uuid.uuid4().hex
    )
    assert await count(warehouse) == 10


async def test_clickhouse_calls_do_not_block_the_event_loop(warehouse: Warehouse) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await warehouse.scalar("SELECT sleep(1)")
    task.cancel()
    assert ticks >= 50  # the loop kept running for most of the one-second query


async def test_close_during_a_flush_loses_nothing(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    entered = asyncio.Event()

    async def slow(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        entered.set()
        await asyncio.sleep(0.3)  # close() arrives while this batch is in flight
        return batch

    running = writer(tracking_log, warehouse, redis, interval_ms=20, prepare=slow)
    running.start()
    for _ in range(10):
        await tracking_log.append(rows(100))
    await entered.wait()
    await running.close()
    assert await count(warehouse) == 1000
    assert await warehouse.scalar("SELECT uniqExact(event_id) FROM tracking_events") == 1000


async def test_rows_clickhouse_refuses_for_their_data_are_isolated_and_kept_apart(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    """A value the schema let through that a column cannot hold: that row alone is refused
    (dead-lettered, counted lost), its neighbours are stored and announced."""
    accepted = rows(9)
    poisoned = accepted[4].event_id

    async def out_of_range(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        for row in batch:
            if row.event_id == poisoned:
                row.session_seq = "twelve"  # type: ignore[assignment]  # a UInt32 column
        return batch

    lost = counter("analytics_events_lost", reason="refused")
    await tracking_log.append(accepted)
    await writer(tracking_log, warehouse, redis, prepare=out_of_range).flush()
    stored = {r[0] for r in await warehouse.rows("SELECT event_id FROM tracking_events")}
    assert stored == {r.event_id for r in accepted} - {poisoned}
    assert counter("analytics_events_lost", reason="refused") == lost + 1
    (entry,) = await redis.lrange("lw:retry:refused", 0, -1)
    table, reason, line = msgspec.json.decode(entry)
    assert table == "tracking_events" and str(poisoned) in line and reason
    announced = [
        msgspec.json.decode(line)["eventId"]
        for path in sorted(tracking_log.directory.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.startswith(b"{")
    ]
    assert sorted(announced) == sorted(str(r.event_id) for r in accepted if r.event_id != poisoned)
    assert tracking_log.unread_rows == 0


async def test_a_failure_no_one_foresaw_leaves_the_batch_to_be_read_again(
    tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    calls = 0

    async def fails_once(batch: list[TrackingRow], owner: int) -> list[TrackingRow]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return batch

    restarts = counter("component_restarts", component="writer")
    running = writer(tracking_log, warehouse, redis, interval_ms=50, prepare=fails_once)
    running.start()
    accepted = rows(7)
    await tracking_log.append(accepted)
    assert await wait_count(warehouse, 7) == 7
    assert counter("component_restarts", component="writer") == restarts + 1
    await running.close()
    assert tracking_log.unread_rows == 0 and await count(warehouse) == 7
