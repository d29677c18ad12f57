import asyncio
import uuid

import msgspec

from core.clickhouse import Warehouse
from ingest.writer import BatchWriter


class SinkRow(msgspec.Struct, array_like=True):
    id: int
    note: str


COLUMNS = SinkRow.__struct_fields__


def rows(ids: range, note: str = "a") -> list[SinkRow]:
    return [SinkRow(i, note) for i in ids]


async def make_table(warehouse: Warehouse, name: str = "sink") -> None:
    await warehouse.command(
        f"CREATE TABLE {name} (id UInt32, note String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )


async def count(warehouse: Warehouse, table: str = "sink") -> int:
    return int(await warehouse.scalar(f"SELECT count() FROM {table}"))


async def wait_count(warehouse: Warehouse, at_least: int) -> int:
    for _ in range(200):
        if (n := await count(warehouse)) >= at_least:
            return n
        await asyncio.sleep(0.02)
    return await count(warehouse)


async def test_flushes_whole_batches_when_the_buffer_reaches_max_rows(
    warehouse: Warehouse,
) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", SinkRow, max_rows=10, interval_ms=60_000)
    writer.start()
    writer.add(rows(range(9)))
    await asyncio.sleep(0.3)
    assert await count(warehouse) == 0  # under the size, long before the timer
    writer.add(rows(range(9, 11)))
    assert await wait_count(warehouse, 10) == 10  # one full batch; the 11th waits
    await writer.close()
    assert await count(warehouse) == 11


async def test_flushes_on_the_timer(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", SinkRow, max_rows=1000, interval_ms=100)
    writer.start()
    writer.add(rows(range(1)))
    assert await wait_count(warehouse, 1) == 1
    await writer.close()


async def test_a_timer_flush_writes_what_was_buffered_not_what_arrives_meanwhile(
    warehouse: Warehouse,
) -> None:
    # Under steady traffic rows arrive during every insert; a flush that drained them too
    # would chain one small insert after another and pay an insert's fixed cost each time.
    await make_table(warehouse)
    batches: list[int] = []
    writer: BatchWriter[SinkRow]

    async def arrivals_meanwhile(batch: list[SinkRow]) -> list[SinkRow]:
        batches.append(len(batch))
        if len(batches) <= 3:
            writer.add(rows(range(1000 + len(batches) * 10, 1000 + len(batches) * 10 + 3)))
        return batch

    writer = BatchWriter(
        warehouse, "sink", SinkRow, max_rows=1000, interval_ms=600_000, prepare=arrivals_meanwhile
    )
    writer.add(rows(range(5)))
    await writer.flush()
    assert batches == [5] and await count(warehouse) == 5
    assert writer.pending_rows == 3  # they wait for the next tick
    await writer.flush()
    assert batches == [5, 3] and await count(warehouse) == 8
    await writer.close()  # and shutdown writes out what arrived while it was writing
    assert batches == [5, 3, 3, 3] and writer.pending_rows == 0
    assert await count(warehouse) == 14


async def test_close_writes_out_everything_held(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", SinkRow, max_rows=1_000_000, interval_ms=600_000)
    writer.start()
    writer.add(rows(range(2500)))
    await writer.close()
    assert await count(warehouse) == 2500
    assert writer.pending_rows == 0


async def test_prepare_runs_once_per_batch_and_on_stored_sees_what_landed(
    warehouse: Warehouse,
) -> None:
    await make_table(warehouse)
    prepared: list[int] = []
    stored: list[int] = []

    async def keep_even(batch: list[SinkRow]) -> list[SinkRow]:
        prepared.append(len(batch))
        return [r for r in batch if r.id % 2 == 0]

    writer = BatchWriter(
        warehouse,
        "sink",
        SinkRow,
        max_rows=50,
        interval_ms=600_000,
        prepare=keep_even,
        on_stored=lambda batch: stored.extend(r.id for r in batch),
    )
    writer.add(rows(range(120)))
    await writer.flush()
    assert prepared == [50, 50, 20]
    assert sorted(stored) == list(range(0, 120, 2))
    assert await count(warehouse) == 60


async def test_refused_batch_is_held_and_lands_once_when_clickhouse_takes_it(
    warehouse: Warehouse,
) -> None:
    # The table does not exist yet: every insert fails, as when ClickHouse refuses writes.
    stored: list[int] = []
    writer = BatchWriter(
        warehouse,
        "sink",
        SinkRow,
        max_rows=100,
        interval_ms=600_000,
        on_stored=lambda batch: stored.extend(r.id for r in batch),
    )
    writer.add(rows(range(250)))
    await writer.flush()
    assert writer.pending_rows == 250
    assert stored == []
    await make_table(warehouse)
    await writer.flush(force_retries=True)
    assert writer.pending_rows == 0
    assert await count(warehouse) == 250
    assert await warehouse.scalar("SELECT uniqExact(id) FROM sink") == 250
    assert sorted(stored) == list(range(250))


async def test_refused_batch_is_handed_off_with_its_token(warehouse: Warehouse) -> None:
    handed = []

    async def hand_off(batch):  # type: ignore[no-untyped-def]
        handed.append(batch)

    writer = BatchWriter(
        warehouse, "sink", SinkRow, max_rows=100, interval_ms=600_000, hand_off=hand_off
    )
    writer.add(rows(range(150)))
    await writer.flush()
    assert [b.rows for b in handed] == [100, 50]
    assert writer.pending_rows == 0
    await make_table(warehouse)
    for batch in handed * 2:  # a retrier that retries twice stores each batch once
        await warehouse.insert_lines("sink", batch.columns, batch.data, dedup_token=batch.token)
    assert await count(warehouse) == 150


async def test_same_dedup_token_is_stored_once(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    data = msgspec.json.Encoder().encode_lines(rows(range(5)))
    token = uuid.uuid4().hex
    await warehouse.insert_lines("sink", COLUMNS, data, dedup_token=token)
    # A retry after a timeout whose first attempt did land: same token, stored once.
    await warehouse.insert_lines("sink", COLUMNS, data, dedup_token=token)
    assert await count(warehouse) == 5
    await warehouse.insert_lines("sink", COLUMNS, data, dedup_token=uuid.uuid4().hex)
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


async def test_close_during_a_flush_loses_nothing(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    entered = asyncio.Event()

    async def slow(batch: list[SinkRow]) -> list[SinkRow]:
        entered.set()
        await asyncio.sleep(0.3)  # close() arrives while this batch is cut and in flight
        return batch

    writer = BatchWriter(warehouse, "sink", SinkRow, max_rows=100, interval_ms=20, prepare=slow)
    writer.start()
    writer.add(rows(range(1000)))
    await entered.wait()
    await writer.close()
    assert await count(warehouse) == 1000
    assert await warehouse.scalar("SELECT uniqExact(id) FROM sink") == 1000
