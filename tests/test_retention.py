"""Retention: raw days archived to Parquet from day 80, verified (rows and event-id checksum)
and recorded once; purged past day 90 only when the verified copy still matches (no TTL);
a day storage refused stays hot and is counted; restored with one command; and `analytics
jobs` to see and start jobs."""

import asyncio
import contextlib
import dataclasses
import io
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from cli.demo_traffic import generate, load
from core.clickhouse import Warehouse
from core.settings import Settings
from core.storage import FileStorage
from materialized import archive, export_state, session_hours
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
    server: Running, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = generate(days_ago(95), days=2, sessions_per_day=20, seed=23)  # 95 and 94 days old
    await load(warehouse, old)
    monkeypatch.setattr(session_hours, "IN_FLIGHT_SECONDS", 0)  # every insert here has landed
    assert await session_hours.seal(warehouse) > 0  # the sessions' journeys kept per session
    ctx = {"job": job_of(server, warehouse)}
    first = days_ago(95).date()
    await archive.archive_day(warehouse, server.services.runtime.storage, first)
    assert await jobs.purge_old_events(ctx) == "purged 1 days"
    remaining = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) FROM tracking_events ORDER BY 1"
    )
    assert [r[0] for r in remaining] == [days_ago(94).date()]  # not archived: kept
    funnels_copy = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) FROM visitor_events ORDER BY 1"
    )
    assert funnels_copy == remaining  # the funnels' copy of the day goes with it
    journeys = await warehouse.rows(
        "SELECT DISTINCT toDate(start_hour) FROM stats_session_journeys ORDER BY 1"
    )
    assert journeys == remaining  # and the journeys of the sessions that started on it
    before = await warehouse.scalar("SELECT sum(events) FROM tracking_events_hourly")
    restored = await archive.restore_day(warehouse, server.services.runtime.storage, first)
    assert restored == sum(1 for r in old.tracking if r.received_at.date() == first)
    assert await warehouse.scalar("SELECT sum(events) FROM tracking_events_hourly") == before


async def hot_days(warehouse: Warehouse) -> list[date]:
    found = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) FROM tracking_events ORDER BY 1"
    )
    return [r[0] for r in found]


async def test_an_archive_outage_past_retention_loses_no_raw_day(
    server: Running, warehouse: Warehouse, small_disk: Path
) -> None:
    old = generate(days_ago(95), days=3, sessions_per_day=20, seed=24)  # 95..93 days old
    await load(warehouse, old)
    days = await hot_days(warehouse)
    filler = small_disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 20))
    full = FileStorage(small_disk / "archive", b"k" * 32, "http://analytics.test")
    ctx = {"job": dataclasses.replace(job_of(server, warehouse), storage=full)}
    failures = REGISTRY.get_sample_value("archive_failures_total") or 0.0

    with pytest.raises(RuntimeError, match="3 days kept hot, not archived"):
        await jobs.archive_historical_data(ctx)
    assert REGISTRY.get_sample_value("archive_days_behind") == 3
    assert REGISTRY.get_sample_value("archive_failures_total") == failures + 3
    assert await warehouse.scalar("SELECT count() FROM archive_log") == 0
    # Past retention, not archived: the purge (and no TTL) keeps every row.
    assert await jobs.purge_old_events(ctx) == "purged 0 days"
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == len(old.tracking)

    filler.unlink()  # storage works again
    assert await jobs.archive_historical_data(ctx) == f"archived 3 days, {len(old.tracking)} rows"
    assert REGISTRY.get_sample_value("archive_days_behind") == 0
    assert await jobs.purge_old_events(ctx) == "purged 3 days"
    assert await hot_days(warehouse) == []
    for day in days:
        assert await archive.restore_day(warehouse, full, day) == sum(
            1 for r in old.tracking if r.received_at.date() == day
        )


async def test_a_day_that_changed_after_archiving_is_archived_again_before_purging(
    server: Running, warehouse: Warehouse
) -> None:
    old = generate(days_ago(95), days=1, sessions_per_day=20, seed=25)
    await load(warehouse, old)
    (day,) = await hot_days(warehouse)
    storage = server.services.runtime.storage
    first = await archive.archive_day(warehouse, storage, day)
    # A batch from the retry queue lands in the archived day afterwards.
    late = generate(days_ago(95), days=1, sessions_per_day=2, seed=26)
    await load(warehouse, late)
    assert await archive.fingerprint(warehouse, day) != archive.file_fingerprint(
        await storage.read(first.object_key)
    )
    ctx = {"job": job_of(server, warehouse)}
    assert await jobs.purge_old_events(ctx) == "purged 1 days"
    kept = archive.file_fingerprint(await storage.read(first.object_key))
    assert kept.rows == len(old.tracking) + len(late.tracking)
    logged = await warehouse.rows("SELECT rows, checksum FROM archive_log FINAL")
    assert logged == [(kept.rows, kept.checksum)]


async def test_the_checksum_tells_a_swapped_row_from_the_day(warehouse: Warehouse) -> None:
    old = generate(days_ago(85), days=1, sessions_per_day=20, seed=27)
    await load(warehouse, old)
    (day,) = await hot_days(warehouse)
    start = datetime.combine(day, datetime.min.time(), UTC)
    data = await warehouse.formatted(
        "SELECT * EXCEPT (path) FROM tracking_events WHERE toDate(received_at) = {day:Date}",
        {"day": start.date()},
        "Parquet",
    )
    assert archive.file_fingerprint(data) == await archive.fingerprint(warehouse, day)
    table = pq.read_table(io.BytesIO(data))
    ids = table.column("event_id").to_pylist()
    swapped = table.set_column(
        table.column_names.index("event_id"),
        table.schema.field("event_id"),
        pa.array([*ids[:-1], ids[0]], type=table.schema.field("event_id").type),
    )
    out = io.BytesIO()
    pq.write_table(swapped, out)
    copy = archive.file_fingerprint(out.getvalue())
    assert copy.rows == len(ids)  # a count alone would pass it
    assert copy != await archive.fingerprint(warehouse, day)


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
        # By the name it was run by, finished, with its result.
        return "rebuild-dashboards  DONE" in out.stdout and "rebuilt 4 dashboards" in out.stdout

    for _ in range(100):
        if await listed():
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the job never showed up as run")
    unknown = await asyncio.to_thread(analytics, "jobs", "run", "reticulate", env=env)
    assert unknown.returncode != 0 and "unknown job" in unknown.stderr
    export_args = [
        *("jobs", "run", "export", "--report", "REVENUE", "--format", "CSV"),
        *("--from", "2026-01-01T00:00:00+00:00", "--to", "2026-02-01T00:00:00+00:00"),
    ]
    unnamed = await asyncio.to_thread(analytics, *export_args, env=env)
    assert unnamed.returncode != 0 and "--requested-by" in unnamed.stderr
    admin = str(uuid.uuid4())
    export = await asyncio.to_thread(analytics, *export_args, "--requested-by", admin, env=env)
    assert export.returncode == 0, export.stderr
    assert export.stdout.startswith("enqueued export ")
    export_id = export.stdout.split()[-1]
    state = await export_state.load(server.services.runtime.redis, export_id)
    assert state is not None and state.requested_by == admin


@pytest.mark.integration  # the command in a process of its own
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


async def test_a_day_purged_from_the_raw_events_alone_leaves_the_funnels_copy_too(
    warehouse: Warehouse,
) -> None:
    """A purge that did not know visitor_events (a version before it, running beside a newer
    one) removed a verified day from tracking_events only: the next purge removes the stray
    copy; a day not archived stays in both."""
    old = generate(days_ago(95), days=2, sessions_per_day=20, seed=25)  # 95 and 94 days old
    await load(warehouse, old)
    first, second = days_ago(95).date(), days_ago(94).date()
    await warehouse.command(
        "INSERT INTO archive_log (table_name, day, rows, checksum, object_key)"
        " VALUES ('tracking_events', {day:Date}, 0, '', 'x')",
        {"day": first},
    )
    await warehouse.delete_where(
        "tracking_events", "toDate(received_at) = {day:Date}", {"day": first}
    )
    assert await archive.purge(warehouse, None, date.today()) == []
    left = await warehouse.rows("SELECT DISTINCT toDate(received_at) FROM visitor_events")
    assert left == [(second,)]
