"""What the views' deduplication windows (sql/0031) cost at insert: writer-shaped inserts
(JSONCompactEachRow lines under a token) into `tracking_events` with every view target's
window on and with it set to 0, rounds interleaved in one chDB process (the machine is noisy).

    .venv/bin/python -m bench.dedup_windows [--batch 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from cli.demo_traffic import generate
from core.clickhouse import Warehouse
from core.migrations import migrate
from tracked.row import TrackingRow

BLOCKS = 40
WINDOW = "MODIFY SETTING non_replicated_deduplication_window = {n}"


async def targets(warehouse: Warehouse) -> list[str]:
    """The tables the views over `tracking_events` (and over them) write."""
    rows = await warehouse.rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND engine LIKE '%MergeTree' AND name IN (SELECT extract(create_table_query,"
        " ' TO (?:\\\\w+\\\\.)?(\\\\w+)') FROM system.tables WHERE database = currentDatabase()"
        " AND engine = 'MaterializedView')"
    )
    return [str(name) for (name,) in rows]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sessions = BLOCKS * args.batch // 4  # about 5 events a demo session
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = generate(start, days=1, sessions_per_day=sessions, seed=1).tracking
    encoder = msgspec.json.Encoder()
    blocks = [
        encoder.encode_lines(rows[at : at + args.batch]) for at in range(0, len(rows), args.batch)
    ]
    blocks = [b for b in blocks if b.count(b"\n") == args.batch][:BLOCKS]
    columns = TrackingRow.__struct_fields__
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = Warehouse(f"chdb://{Path(tmp) / 'ch'}", "bench")
        await warehouse.open()
        await migrate(warehouse)
        tables = await targets(warehouse)

        async def rows_per_second() -> float:
            started = time.perf_counter()
            for block in blocks:
                await warehouse.insert_lines(
                    "tracking_events", columns, block, dedup_token=uuid.uuid4().hex
                )
            return len(blocks) * args.batch / (time.perf_counter() - started)

        async def windows(n: int) -> None:
            for table in tables:
                await warehouse.command(f"ALTER TABLE {table} {WINDOW.format(n=n)}")

        await rows_per_second()  # warm-up
        on: list[float] = []
        off: list[float] = []
        for _ in range(args.rounds):
            on.append(await rows_per_second())
            await windows(0)
            off.append(await rows_per_second())
            await windows(10_000)
        await warehouse.close()
    with_windows, without = statistics.median(on), statistics.median(off)
    print(
        f"{len(blocks)} inserts of {args.batch:,} rows, {args.rounds} rounds, {len(tables)} view"
        f" targets: windows on {with_windows:,.0f} rows/s, off {without:,.0f} rows/s;"
        f" on/off {with_windows / without:.3f}"
        f" ({1e6 / with_windows - 1e6 / without:+.2f} µs a row)"
    )


if __name__ == "__main__":
    asyncio.run(main())
