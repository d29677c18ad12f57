"""Warehouse.stream against the real engine: pieces of the set size, a consumer that leaves
early stops the reading (and frees the thread and its handle), an error mid-result raises."""

import asyncio
import contextlib
import time

import pytest

from core import clickhouse
from core.clickhouse import Warehouse, WarehouseError


async def test_pieces_are_the_set_size_and_make_the_whole_result(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse, "STREAM_CHUNK_BYTES", 1000)
    sql = "SELECT number, toString(number * 7) FROM numbers(50000)"
    pieces = [p async for p in warehouse.stream(sql, {}, "CSV")]
    assert all(len(p) == 1000 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 1000
    assert b"".join(pieces) == await warehouse.formatted(sql, {}, "CSV")


async def test_a_consumer_that_leaves_stops_the_reading(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse, "STREAM_CHUNK_BYTES", 100)
    started = time.monotonic()
    for _ in range(8):  # more than the pool's threads: each reader must have let go
        pieces = warehouse.stream("SELECT number FROM numbers(10000000000)", {}, "CSV")
        async with contextlib.aclosing(pieces):
            async for _piece in pieces:
                break
    assert await asyncio.wait_for(warehouse.scalar("SELECT 1"), 5) == 1
    assert time.monotonic() - started < 10  # ten billion rows were never read


async def test_an_error_in_the_middle_raises_and_the_warehouse_goes_on(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clickhouse, "STREAM_CHUNK_BYTES", 1000)
    received = 0
    with pytest.raises(WarehouseError, match="throwIf"):
        async for piece in warehouse.stream(
            "SELECT throwIf(number = 300000) FROM numbers(1000000)", {}, "CSV"
        ):
            received += len(piece)
    assert received > 0
    assert await warehouse.scalar("SELECT 2") == 2
