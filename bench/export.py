"""Export of 1,000,000 rows as CSV and as a JSON document: seconds and peak memory growth of the
process, against ClickHouse writing the same rows to a local file by itself, same run: the
same query and text in one go (the export's own SQL, materialized/reports.row_report_sql),
and, for scale, the bare columns with ClickHouse's own formatting (no local times, no exact
amounts as text). Goals (issue 30): 10M rows <= 10 s and <= 100 MB of memory growth, within
2x of ClickHouse writing the same file.

Each measurement runs in a fresh process on one prepared chDB directory, so memory figures
do not mix.

    .venv/bin/python -m bench.export [--rows 1000000]   (issue 30's figures: --rows 10000000)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.clickhouse import Warehouse
from core.migrations import migrate
from core.storage import FileStorage
from materialized import reports

ORDERS = """
INSERT INTO analytics_events (event_id, event_type, routing_key, version, occurred_at,
    received_at, customer_id, order_id, amount, currency, quantity, payload)
SELECT generateUUIDv4(number), 'order-created', 'lomash.orders.created', '1.0',
    {start:DateTime64(3, 'UTC')} + toIntervalMillisecond(number * {step:UInt64}) AS at, at,
    generateUUIDv4(number + 1), generateUUIDv4(number + 2),
    toDecimal128(1000 + number % 800000 / 100, 6), 'GBP', 1 + number % 3, '{}'
FROM numbers({rows:UInt64})
"""


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakRss:
    """Samples the resident size every 5 ms while running: ru_maxrss would also count peaks
    from before the measurement (chDB's start-up)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


async def prepare(path: str, rows: int) -> None:
    warehouse = Warehouse(f"chdb://{path}", "bench")
    await warehouse.open()
    await migrate(warehouse)
    start = datetime.now(UTC) - timedelta(days=40)
    # Spread over those 40 days whatever their number, so the 60-day export takes them all.
    step = 40 * 86_400_000 // rows
    await warehouse.command(ORDERS, {"start": start, "rows": rows, "step": step})
    # Merge now, so that no background merge runs during (and inflates) a measurement.
    for table in (
        "analytics_events",
        "domain_events_hourly",
        "customer_orders_hourly",
        "customer_first_order",
    ):
        await warehouse.command(f"OPTIMIZE TABLE {table} FINAL")
    await warehouse.close()


async def run_export(
    warehouse: Warehouse, mode: str, out: str, start: datetime, end: datetime
) -> None:
    zone = zoneinfo.ZoneInfo("Europe/London")
    if mode == "clickhouse-raw":
        await warehouse.command(
            "INSERT INTO FUNCTION file({out:String}, 'CSVWithNames')"
            " SELECT occurred_at, order_id, customer_id, amount, currency, quantity"
            " FROM analytics_events FINAL WHERE event_type = 'order-created'"
            " ORDER BY occurred_at, event_id",
            {"out": out},
        )
        return
    if mode.startswith("clickhouse-"):
        fmt = "CSV" if mode == "clickhouse-csv" else "JSON"
        file_format = "CSVWithNames" if fmt == "CSV" else "JSONEachRow"
        await warehouse.command(
            f"INSERT INTO FUNCTION file({{out:String}}, '{file_format}')"
            f" {reports.row_report_sql('ORDERS', fmt)}",
            {"out": out, "start": start, "end": end, "zone": zone.key},
        )
        return
    storage = FileStorage(Path(out).parent, b"k" * 32, "http://127.0.0.1")
    writer = await storage.writer(Path(out).name)
    await reports.write_report(
        warehouse, "ORDERS", "CSV" if mode == "csv" else "JSON", start, end, zone, writer.write
    )
    await writer.close()


async def measure(path: str, mode: str, out: str) -> dict[str, float]:
    warehouse = Warehouse(f"chdb://{path}", "bench")
    await warehouse.open()
    end = datetime.now(UTC) + timedelta(days=1)
    start = end - timedelta(days=60)
    await warehouse.scalar("SELECT count() FROM analytics_events")  # warm the engine
    await asyncio.sleep(1)
    before = rss_mb()
    with PeakRss() as sampler:
        started = time.perf_counter()
        await run_export(warehouse, mode, out, start, end)
        seconds = time.perf_counter() - started
    await warehouse.close()
    size = await asyncio.to_thread(lambda: Path(out).stat().st_size)
    return {"seconds": seconds, "growth_mb": sampler.peak - before, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MODE", "OUT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(*args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "ch")
        asyncio.run(prepare(data, args.rows))
        results = {}
        for mode in ("clickhouse-raw", "clickhouse-csv", "clickhouse-json", "csv", "json"):
            out = str(Path(tmp) / f"{mode}.out")
            child = subprocess.run(
                [sys.executable, "-m", "bench.export", "--child", data, mode, out],
                check=True,
                capture_output=True,
                text=True,
            )
            results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{args.rows:,} order rows")
    for mode, label, base in (
        ("clickhouse-raw", "ClickHouse, bare columns (for scale)", "clickhouse-raw"),
        ("clickhouse-csv", "ClickHouse, the same CSV (baseline)", "clickhouse-csv"),
        ("csv", "export job, CSV", "clickhouse-csv"),
        ("clickhouse-json", "ClickHouse, the same JSON (baseline)", "clickhouse-json"),
        ("json", "export job, JSON (one array)", "clickhouse-json"),
    ):
        r, b = results[mode], results[base]
        print(
            f"{label:<40} {r['seconds']:6.2f} s ({r['seconds'] / b['seconds']:4.2f}x baseline,"
            f" {r['seconds'] / results['clickhouse-raw']['seconds']:4.2f}x bare)"
            f"  peak memory growth {r['growth_mb']:6.1f} MB  file {r['bytes'] / 2**20:6.1f} MB"
        )


if __name__ == "__main__":
    main()
