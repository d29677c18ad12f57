"""Cold storage of raw events: each UTC day of `tracking_events` as Parquet, before the 90-day
TTL removes it (`archive/tracking_events/date=YYYY-MM-DD/part-0.parquet`).

A day is recorded in `archive_log` only after the file was read back from storage and its row
count matched ClickHouse's, so a re-run archives what is missing and nothing twice; purging
deletes only days the log holds. ClickHouse writes the Parquet; one day's file is held in
memory while it is uploaded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow.parquet as pq

from core.clickhouse import Warehouse
from core.limits import RAW_RETENTION_DAYS
from core.storage import Storage

TABLE = "tracking_events"
RETENTION_DAYS = RAW_RETENTION_DAYS
ARCHIVE_AFTER_DAYS = 80  # ten days of slack before the TTL for a failing job to be noticed
_COLUMNS = "* EXCEPT (path)"  # `path` is derived from url when the rows are loaded again


@dataclass(frozen=True, slots=True)
class Archived:
    day: date
    object_key: str
    rows: int


def object_key(day: date) -> str:
    return f"archive/{TABLE}/date={day.isoformat()}/part-0.parquet"


async def days_to_archive(warehouse: Warehouse, today: date) -> list[date]:
    rows = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) AS day FROM tracking_events"
        " WHERE received_at < {cutoff:DateTime('UTC')}"
        " AND day NOT IN (SELECT day FROM archive_log FINAL WHERE table_name = {table:String})"
        " ORDER BY day",
        {
            "cutoff": datetime.combine(
                today - timedelta(days=ARCHIVE_AFTER_DAYS - 1), datetime.min.time(), UTC
            ),
            "table": TABLE,
        },
    )
    return [r[0] for r in rows]


async def archive_day(warehouse: Warehouse, storage: Storage, day: date) -> Archived:
    start = datetime.combine(day, datetime.min.time(), UTC)
    params = {"start": start, "end": start + timedelta(days=1)}
    where = " WHERE received_at >= {start:DateTime('UTC')} AND received_at < {end:DateTime('UTC')}"
    expected = int(await warehouse.scalar(f"SELECT count() FROM {TABLE}{where}", params))
    data = await warehouse.formatted(
        f"SELECT {_COLUMNS} FROM {TABLE}{where} ORDER BY received_at, event_id", params, "Parquet"
    )
    key = object_key(day)
    writer = await storage.writer(key)
    try:
        await writer.write(data)
        await writer.close()
    except BaseException:
        await writer.abort()
        raise
    stored = pq.ParquetFile(io.BytesIO(await storage.read(key))).metadata.num_rows
    if stored != expected:
        raise RuntimeError(f"{key}: {stored} rows in the file, {expected} in ClickHouse")
    await warehouse.command(
        "INSERT INTO archive_log (table_name, day, object_key, rows, bytes, archived_at)"
        " VALUES ({table:String}, {day:Date}, {key:String}, {rows:UInt64}, {bytes:UInt64},"
        " now64(3))",
        {"table": TABLE, "day": day, "key": key, "rows": expected, "bytes": len(data)},
    )
    return Archived(day, key, expected)


async def purge(warehouse: Warehouse, today: date) -> list[date]:
    """Delete raw days past retention that the archive holds and the TTL has not removed."""
    cutoff = today - timedelta(days=RETENTION_DAYS)
    rows = await warehouse.rows(
        "SELECT day FROM archive_log FINAL WHERE table_name = {table:String}"
        " AND day < {cutoff:Date} AND day IN (SELECT DISTINCT toDate(received_at)"
        " FROM tracking_events WHERE received_at < {cutoff_ts:DateTime('UTC')}) ORDER BY day",
        {
            "table": TABLE,
            "cutoff": cutoff,
            "cutoff_ts": datetime.combine(cutoff, datetime.min.time(), UTC),
        },
    )
    days = [r[0] for r in rows]
    for day in days:
        await warehouse.delete_where(
            "tracking_events", "toDate(received_at) = {day:Date}", {"day": day}
        )
    return days


async def restore_day(warehouse: Warehouse, storage: Storage, day: date) -> int:
    """Load an archived day into `tracking_events_restored` (see its migration for why)."""
    data = await storage.read(object_key(day))
    columns = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    await warehouse.delete_where(
        "tracking_events_restored", "toDate(received_at) = {day:Date}", {"day": day}
    )
    await warehouse.insert_raw("tracking_events_restored", columns, data, "Parquet")
    return int(
        await warehouse.scalar(
            "SELECT count() FROM tracking_events_restored WHERE toDate(received_at) = {day:Date}",
            {"day": day},
        )
    )
