"""What each stats view costs at insert: rows/s into `tracking_events` with every view attached,
against the same with one view detached, in one chDB process, rounds interleaved (the machine
is noisy). The difference, per row, is that view's share of the writer's insert.

Then what one insert costs by its size, through the writer's own path (JSONCompactEachRow
lines, a deduplication token), with every view attached and with none: the fixed part (planning
each view's query, a part per table) is paid per insert, which is why the writer's timer flush
must not chain small inserts.

    .venv/bin/python -m bench.view_cost [--rows 40000] [--batch 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.stats import DAYS, EVENTS
from core.clickhouse import Warehouse
from core.migrations import migrate
from tracked.row import TrackingRow

VIEWS = (
    "stats_hourly_mv",
    "stats_sessions_mv",
    "stats_visits_mv",
    "stats_pages_mv",
    "visitor_events_mv",
    "stats_audience_hourly_mv",
)


async def rows_per_second(warehouse: Warehouse, rows: int, batch: int, first: int) -> float:
    now = datetime.now(UTC) + timedelta(hours=1)
    started = time.perf_counter()
    for at in range(first, first + rows, batch):
        await warehouse.command(EVENTS, {"now": now, "days": DAYS, "first": at, "count": batch})
    return rows / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(f"chdb://{Path(tmp) / 'ch'}", "bench")
        await warehouse.open()
        await migrate(warehouse)
        first = 0
        await rows_per_second(warehouse, args.rows, args.batch, first)  # warm-up
        first += args.rows
        with_all: list[float] = []
        without: dict[str, list[float]] = {view: [] for view in VIEWS}
        for _ in range(args.rounds):
            for view in VIEWS:
                with_all.append(await rows_per_second(warehouse, args.rows, args.batch, first))
                first += args.rows
                await warehouse.command(f"DETACH TABLE {view}")
                try:
                    without[view].append(
                        await rows_per_second(warehouse, args.rows, args.batch, first)
                    )
                finally:
                    await warehouse.command(f"ATTACH TABLE {view}")
                first += args.rows
        by_size = await insert_cost_by_size(warehouse, first)
        await warehouse.close()
    base = statistics.median(with_all)
    print(
        f"{args.rows:,} rows in batches of {args.batch:,}, {args.rounds} rounds;"
        f" every view attached: median {base:,.0f} rows/s ({1e6 / base:.1f} µs/row)"
    )
    print(f"{'detached':26s} {'rows/s':>9s} {'/ all':>6s} {'µs/row of the view':>19s}")
    for view, samples in without.items():
        rate = statistics.median(samples)
        print(f"{view:26s} {rate:9,.0f} {rate / base:6.2f} {1e6 / base - 1e6 / rate:19.1f}")
    print("\none insert through the writer's path, median ms (µs per row)")
    print(f"{'rows':>8s} {'every view':>20s} {'no view':>20s}")
    for size, (viewed, bare) in by_size.items():
        print(
            f"{size:8,d} {viewed * 1e3:11.1f} ({viewed / size * 1e6:6.1f})"
            f" {bare * 1e3:11.1f} ({bare / size * 1e6:6.1f})"
        )


SIZES = (1, 100, 1_000, 10_000)


async def insert_cost_by_size(warehouse: Warehouse, first: int) -> dict[int, tuple[float, float]]:
    """Median seconds per insert of each size, every view attached, then every view detached."""
    now = datetime.now(UTC) + timedelta(hours=1)
    await warehouse.command(EVENTS, {"now": now, "days": DAYS, "first": first, "count": 10_000})
    columns = TrackingRow.__struct_fields__
    sample = f"SELECT {', '.join(columns)} FROM tracking_events LIMIT 10000"
    lines = (await warehouse.formatted(sample, {}, "JSONCompactEachRow")).splitlines(True)

    async def median_seconds(size: int) -> float:
        block, samples = b"".join(lines[:size]), []
        for _ in range(5):
            started = time.perf_counter()
            await warehouse.insert_lines(
                "tracking_events", columns, block, dedup_token=uuid.uuid4().hex
            )
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    viewed = {size: await median_seconds(size) for size in SIZES}
    views = [
        str(row[0])
        for row in await warehouse.rows(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
            " AND engine = 'MaterializedView'"
        )
    ]
    for view in views:
        await warehouse.command(f"DETACH TABLE {view}")
    try:
        bare = {size: await median_seconds(size) for size in SIZES}
    finally:
        for view in views:
            await warehouse.command(f"ATTACH TABLE {view}")
    return {size: (viewed[size], bare[size]) for size in SIZES}


if __name__ == "__main__":
    asyncio.run(main())
