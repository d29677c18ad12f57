"""The beacon pipeline under load, every figure against a baseline from the same run.

1. one event per request: the service's requests/s against a Sanic handler that only
   answers 202 (bench/noop_app.py), both single-process, both loaded by wrk;
2. arrays of 100 events: events/s *stored* (tracking_events_stored_total over the run);
3. at about half the service's maximum rate: p50/p99 request latency, and the p99 time from the
   202 to the row being queryable (tracking_visible_seconds, the oldest row of each batch);
4. per run, `event.tracked` confirmed per second by the relay and its backlog at the end, and
   the resident memory of the service and its relay;
5. where the machine's CPU went, per event: the service's event loop, its other threads
   (chDB, fsync), the relay, Redis, RabbitMQ and the kernel, for the no-op, single events
   and arrays;
6. the engine's own limit (issue 30): chDB alone inserting the rows the arrays run stored,
   read back from it, into a fresh `tracking_events` with every view, in batches of the
   writer's size (FLUSH_MAX_ROWS) and encoding (JSONCompactEachRow lines, a token each): no
   HTTP, no Redis, no relay. Arrays stored/s are compared with it (goal >= 0.8).
Finally every 202 is checked against the rows in ClickHouse.

    .venv/bin/python bench/track_rps.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    count_rows,
    cpu_seconds,
    event,
    free_port,
    histogram_quantile,
    metric,
    noop,
    rss_mb,
    running,
    service,
    wrk,
    wrk_script,
)

PUBLISHED = "analytics_events_published_total"
TRACK = "/v1/analytics/track"
BATCH_ROWS = 10_000  # the writer's batch at full load: FLUSH_MAX_ROWS' default


async def insert_limit(stored: str, fresh: str, seconds: float) -> dict[str, float]:
    """chDB alone: a batch of the rows `stored` holds, inserted into `fresh` again and again."""
    from core.clickhouse import Warehouse
    from core.migrations import migrate
    from tracked.row import TRACKING_COLUMNS

    source = Warehouse(f"chdb://{stored}", "analytics")
    batch = await source.formatted(
        f"SELECT {', '.join(TRACKING_COLUMNS)} FROM tracking_events LIMIT {BATCH_ROWS}",
        {},
        "JSONCompactEachRow",
    )
    await source.close()
    rows = batch.count(b"\n")
    target = Warehouse(f"chdb://{fresh}", "analytics")
    await target.open()
    await migrate(target)

    async def insert() -> None:
        await target.insert_lines(
            "tracking_events", TRACKING_COLUMNS, batch, dedup_token=uuid.uuid4().hex
        )

    for _ in range(3):  # the first parts of every view, as the service's warm-up
        await insert()
    cpu, started, stored_rows = time.process_time(), time.monotonic(), 0
    while time.monotonic() - started < seconds:
        await insert()
        stored_rows += rows
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    await target.close()
    return {
        "rows_per_s": stored_rows / elapsed,
        "cpu_us_per_row": cpu / stored_rows * 1e6,
        "batch_rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--limit", nargs=2, metavar=("STORED", "FRESH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    secs, conns = args.seconds, args.connections
    if args.limit:  # the child process of step 6 (chDB: one data path per process)
        print(json.dumps(asyncio.run(insert_limit(*args.limit, secs))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        one = wrk_script(tmpdir / "one.lua", event())
        hundred = wrk_script(tmpdir / "hundred.lua", [event() for _ in range(100)])

        cmd, env = noop()
        with running(cmd, env, free_port()) as base:
            wrk(base + TRACK, one, 2, conns)
            cpu_before = cpu_seconds(base)
            baseline = wrk(base + TRACK, one, secs, conns)
            cpu_baseline = cpu_seconds(base) - cpu_before

        data = tmpdir / "single"
        cmd, env = service(data)
        with running(cmd, env, free_port()) as base:
            warm = wrk(base + TRACK, one, 2, conns)
            published_before = metric(base, PUBLISHED)
            cpu_before = cpu_seconds(base)
            single = wrk(base + TRACK, one, secs, conns)
            cpu_single = cpu_seconds(base) - cpu_before
            published_single = (metric(base, PUBLISHED) - published_before) / secs
            backlog_single = metric(base, "analytics_publish_backlog")
            rss_single = rss_mb(base)
        single_answered = warm["requests"] - warm["errors"] + single["requests"] - single["errors"]
        single_rows = count_rows(data)

        data = tmpdir / "arrays"
        cmd, env = service(data)
        with running(cmd, env, free_port()) as base:
            warm = wrk(base + TRACK, hundred, 2, conns)
            time.sleep(2)  # let the warm-up drain so the window counts only its own rows
            stored_before, started = metric(base, "tracking_events_stored_total"), time.monotonic()
            published_before = metric(base, PUBLISHED)
            cpu_before = cpu_seconds(base)
            arrays = wrk(base + TRACK, hundred, secs, conns)
            stored_after, ended = metric(base, "tracking_events_stored_total"), time.monotonic()
            cpu_arrays = cpu_seconds(base) - cpu_before
            rss_arrays = rss_mb(base)
            published_arrays = (metric(base, PUBLISHED) - published_before) / (ended - started)
            backlog_arrays = metric(base, "analytics_publish_backlog")
        arrays_rows = count_rows(data)
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.track_rps",
                "--seconds",
                str(secs),
                "--limit",
                str(data / "clickhouse"),
                str(tmpdir / "limit"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        limit = json.loads(child.stdout.strip().splitlines()[-1])
        # Only 202s count: a 503 (ingest behind) accepted nothing.
        arrays_answered = 100 * (
            warm["requests"] - warm["errors"] + arrays["requests"] - arrays["errors"]
        )
        stored_rate = (stored_after - stored_before) / (ended - started)

        half = single["rps"] / 2
        # wrk paces each connection: request, answer, delay(); delay ≈ connections / rate.
        paced = wrk_script(tmpdir / "paced.lua", event(), delay_ms=round(1000 * conns / half, 2))
        data = tmpdir / "half"
        cmd, env = service(data)
        with running(cmd, env, free_port()) as base:
            # Warmed up like the other runs: a fresh service's first inserts build the views'
            # first parts, and their seconds are not the steady state this run is about.
            wrk(base + TRACK, paced, 2, conns)
            at_half = wrk(base + TRACK, paced, secs, conns)
            backlog_half = metric(base, "analytics_publish_backlog")
            visible_p99 = histogram_quantile(base, "tracking_visible_seconds", 0.99)
            visible_p50 = histogram_quantile(base, "tracking_visible_seconds", 0.50)

    print(f"{'run':<34}{'req/s':>10}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-202':>9}")
    for name, r, per in (
        ("no-op Sanic, 1 event/request", baseline, 1),
        ("service, 1 event/request", single, 1),
        ("service, 100 events/request", arrays, 100),
        ("service at ~half max rate", at_half, 1),
    ):
        print(
            f"{name:<34}{r['rps']:>10.0f}{r['rps'] * per:>11.0f}{r['p50_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['errors']:>9.0f}"
        )
    print(f"\nservice / no-op (1 event/request):      {single['rps'] / baseline['rps']:.2f}")
    print(f"stored events/s with arrays of 100:     {stored_rate:,.0f}")
    print(
        f"chDB alone, batches of {limit['batch_rows']:,.0f} through the views:"
        f" {limit['rows_per_s']:,.0f} rows/s ({limit['cpu_us_per_row']:.1f} µs CPU a row);"
        f" arrays stored / that limit: {stored_rate / limit['rows_per_s']:.2f}"
    )
    print(f"202 -> queryable at half rate: p50 <= {visible_p50}s, p99 <= {visible_p99}s")
    print(
        "event.tracked confirmed/s (backlog at the end): "
        f"1 event/request {published_single:,.0f} ({backlog_single:,.0f}), "
        f"arrays {published_arrays:,.0f} ({backlog_arrays:,.0f}), "
        f"half rate backlog {backlog_half:,.0f}"
    )
    print(
        f"resident memory (service and relay) after the run: 1 event/request {rss_single:,.0f} MB,"
        f" arrays {rss_arrays:,.0f} MB"
    )
    # Where the two cores went: what the goals have to be found in.
    runs = (
        ("no-op", cpu_baseline, baseline["requests"]),
        ("1 event/request", cpu_single, single["requests"]),
        ("arrays (per stored event)", cpu_arrays, stored_after - stored_before),
    )
    print(f"\nCPU µs per event{'':<18}" + "".join(f"{name:>27}" for name, _, _ in runs))
    for part in sorted(set(cpu_single) | set(cpu_arrays), key=lambda p: -cpu_single[p]):
        print(
            f"{part:<34}" + "".join(f"{cpu[part] / max(n, 1) * 1e6:>27.1f}" for _, cpu, n in runs)
        )
    print(
        f"{'cores busy (wrk not counted)':<34}"
        + "".join(f"{sum(cpu.values()) / secs:>27.2f}" for _, cpu, _ in runs)
    )
    # wrk stops counting at its deadline while the last in-flight requests still land, so the
    # rows may exceed the counted answers by up to one request per connection.
    print(
        f"rows stored / 202s counted by wrk: single {single_rows}/{single_answered}, "
        f"arrays {arrays_rows}/{arrays_answered}"
    )


if __name__ == "__main__":
    main()
