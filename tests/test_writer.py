import asyncio
import uuid

from ingest.writer import BatchWriter
from materialized.warehouse import Warehouse

COLUMNS = ("id", "note")


async def make_table(warehouse: Warehouse, name: str = "sink") -> None:
    await warehouse.command(
        f"CREATE TABLE {name} (id UInt32, note String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )


async def count(warehouse: Warehouse, table: str = "sink") -> int:
    return int(await warehouse.scalar(f"SELECT count() FROM {table}"))


async def test_flushes_when_the_buffer_reaches_max_rows(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", COLUMNS, max_rows=10, interval_ms=60_000)
    writer.start()
    writer.add([(i, "a") for i in range(9)])
    await asyncio.sleep(0.3)
    assert await count(warehouse) == 0  # under the size, long before the timer
    writer.add([(9, "a"), (10, "a")])
    for _ in range(100):
        if await count(warehouse) >= 10:
            break
        await asyncio.sleep(0.02)
    assert await count(warehouse) == 10  # one full batch; the 11th waits
    await writer.close()
    assert await count(warehouse) == 11


async def test_flushes_on_the_timer(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", COLUMNS, max_rows=1000, interval_ms=100)
    writer.start()
    writer.add([(1, "a")])
    for _ in range(100):
        if await count(warehouse):
            break
        await asyncio.sleep(0.02)
    assert await count(warehouse) == 1
    await writer.close()


async def test_close_writes_out_everything_held(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    writer = BatchWriter(warehouse, "sink", COLUMNS, max_rows=1_000_000, interval_ms=600_000)
    writer.start()
    writer.add([(i, "a") for i in range(2500)])
    await writer.close()
    assert await count(warehouse) == 2500
    assert writer.pending_rows == 0


async def test_failed_batch_is_kept_and_lands_once_when_clickhouse_takes_it(
    warehouse: Warehouse,
) -> None:
    # The table does not exist yet: every insert fails, as when ClickHouse refuses writes.
    writer = BatchWriter(warehouse, "sink", COLUMNS, max_rows=100, interval_ms=600_000)
    writer.add([(i, "a") for i in range(250)])
    await writer.flush()
    assert writer.pending_rows == 250
    await make_table(warehouse)
    await writer.flush(force_retries=True)
    assert writer.pending_rows == 0
    assert await count(warehouse) == 250
    assert await warehouse.scalar("SELECT uniqExact(id) FROM sink") == 250


async def test_same_dedup_token_is_stored_once(warehouse: Warehouse) -> None:
    await make_table(warehouse)
    rows = [(i, "retry") for i in range(5)]
    token = uuid.uuid4().hex
    await warehouse.insert("sink", rows, COLUMNS, dedup_token=token)
    # A retry after a timeout whose first attempt did land: same token, stored once.
    await warehouse.insert("sink", rows, COLUMNS, dedup_token=token)
    assert await count(warehouse) == 5
    await warehouse.insert("sink", rows, COLUMNS, dedup_token=uuid.uuid4().hex)
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
