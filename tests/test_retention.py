"""Retention: raw days archived to Parquet before the TTL, verified and recorded once; purged
only when archived; restored with one command; and `analytics jobs` to see and start jobs."""

import asyncio
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cli.demo_traffic import generate, load
from core.clickhouse import Warehouse
from core.settings import Settings
from materialized import archive
from tests.conftest import DOWNLOAD_KEY, TEST_REDIS_URL, Running, job_of
from workers import jobs

ROOT = Path(__file__).resolve().parent.parent


def days_ago(n: int) -> datetime:
    return (datetime.now(UTC) - timedelta(days=n)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )


async def test_days_near_the_ttl_are_archived_verified_and_only_once(
    server: Running, warehouse: Warehouse
) -> None:
    traffic = generate(days_ago(86), days=4, sessions_per_day=30, seed=21)  # 86..83 days old
    recent = generate(days_ago(5), days=2, sessions_per_day=30, seed=22)
    await load(warehouse, traffic)
    await load(warehouse, recent)
    ctx = {"job": job_of(server, warehouse)}
    summary = await jobs.archive_historical_data(ctx)
    assert summary == f"archived 4 days, {len(traffic.tracking)} rows"
    logged = await warehouse.rows("SELECT day, rows, object_key FROM archive_log ORDER BY day")
    assert [r[0] for r in logged] == [days_ago(n).date() for n in (86, 85, 84, 83)]
    for day, rows, key in logged:
        data = await server.services.runtime.storage.read(key)
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == rows
        assert key == f"archive/tracking_events/date={day.isoformat()}/part-0.parquet"
        assert "event_id" in table.column_names and "properties" in table.column_names
    assert sum(r[1] for r in logged) == len(traffic.tracking)
    assert await jobs.archive_historical_data(ctx) == "archived 0 days, 0 rows"


async def test_purge_removes_only_archived_days_past_retention(
    server: Running, warehouse: Warehouse
) -> None:
    # Rows older than the TTL cannot be inserted while it stands: lift it for the setup.
    await warehouse.command("ALTER TABLE tracking_events REMOVE TTL")
    old = generate(days_ago(95), days=2, sessions_per_day=20, seed=23)  # 95 and 94 days old
    await load(warehouse, old)
    ctx = {"job": job_of(server, warehouse)}
    first = days_ago(95).date()
    await archive.archive_day(warehouse, server.services.runtime.storage, first)
    assert await jobs.purge_old_events(ctx) == "purged 1 days"
    remaining = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) FROM tracking_events ORDER BY 1"
    )
    assert [r[0] for r in remaining] == [days_ago(94).date()]  # not archived: kept
    before = await warehouse.scalar("SELECT sum(events) FROM tracking_events_hourly")
    restored = await archive.restore_day(warehouse, server.services.runtime.storage, first)
    assert restored == sum(1 for r in old.tracking if r.received_at.date() == first)
    assert await warehouse.scalar("SELECT sum(events) FROM tracking_events_hourly") == before


def analytics(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_jobs_command_lists_runs_and_enqueues_by_name(
    server: Running, warehouse: Warehouse, settings: Settings
) -> None:
    import os

    env = {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        "CLICKHOUSE_URL": settings.clickhouse_url,
        "DOWNLOAD_SIGNING_KEY": DOWNLOAD_KEY,
    }
    started = await asyncio.to_thread(analytics, "jobs", "run", "rebuild-dashboards", env=env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("enqueued rebuild-dashboards: job ")

    async def listed() -> bool:
        out = await asyncio.to_thread(analytics, "jobs", env=env)
        return "rebuild_dashboards" in out.stdout and "ok" in out.stdout

    for _ in range(100):
        if await listed():
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the job never showed up as run")
    unknown = await asyncio.to_thread(analytics, "jobs", "run", "reticulate", env=env)
    assert unknown.returncode != 0 and "unknown job" in unknown.stderr
    export = await asyncio.to_thread(
        analytics,
        "jobs",
        "run",
        "export",
        "--report",
        "REVENUE",
        "--format",
        "CSV",
        "--from",
        "2026-01-01T00:00:00+00:00",
        "--to",
        "2026-02-01T00:00:00+00:00",
        env=env,
    )
    assert export.returncode == 0, export.stderr
    assert export.stdout.startswith("enqueued export ")


@pytest.mark.parametrize("day", ["2026-13-01", "yesterday"])
def test_restore_day_refuses_a_bad_date(tmp_path: Path, day: str) -> None:
    import os

    env = {
        **os.environ,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
        "DOWNLOAD_SIGNING_KEY": DOWNLOAD_KEY,
    }
    result = analytics("restore-day", day, env=env)
    assert result.returncode == 2
    assert "is not a date" in result.stderr
