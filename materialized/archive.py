"""Cold storage of raw events: each UTC day of `tracking_events` as Parquet from day 80
(`archive/tracking_events/date=YYYY-MM-DD/part-0.parquet`), deleted from ClickHouse past day 90.

A day is recorded in `archive_log` only after the file was read back from storage and matched
ClickHouse's day: its row count and a checksum of its event ids (the sum of the 128-bit ids,
wrapping, computed by ClickHouse on one side and from the file's column on the other), so a
re-run archives what is missing and nothing twice. No TTL deletes raw rows: purging deletes a
day only when the log holds it and the day still matches what was verified, so a day that could
not be archived stays hot (`archive_days_behind`) until storage works again. ClickHouse writes
the Parquet; one day's file is held in memory while it is uploaded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.clickhouse import Warehouse
from core.limits import RAW_RETENTION_DAYS
from core.metrics import ARCHIVE_DAYS_BEHIND, ARCHIVE_FAILURES
from core.storage import Storage

TABLE = "tracking_events"
RETENTION_DAYS = RAW_RETENTION_DAYS
ARCHIVE_AFTER_DAYS = 80  # ten days before purging for a failing archive to be noticed
_COLUMNS = "* EXCEPT (path)"  # `path` is derived from url when the rows are loaded again
_WHERE_DAY = " WHERE received_at >= {start:DateTime('UTC')} AND received_at < {end:DateTime('UTC')}"


@dataclass(frozen=True, slots=True)
class Archived:
    day: date
    object_key: str
    rows: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a verified copy of a day must match: its rows and the checksum of their ids."""

    rows: int
    checksum: str


class ArchiveMismatch(RuntimeError):
    """The file read back from storage is not the day ClickHouse holds."""


def _day_params(day: date) -> dict[str, datetime]:
    start = datetime.combine(day, datetime.min.time(), UTC)
    return {"start": start, "end": start + timedelta(days=1)}


async def fingerprint(warehouse: Warehouse, day: date) -> Fingerprint:
    rows, checksum = (
        await warehouse.rows(
            f"SELECT count(), toString(sum(toUInt128(event_id))) FROM {TABLE}{_WHERE_DAY}",
            _day_params(day),
        )
    )[0]
    return Fingerprint(int(rows), str(checksum))


def file_fingerprint(data: bytes) -> Fingerprint:
    """The same figures from the Parquet file: event ids as 16 big-endian bytes, summed in
    32-bit limbs (exact for up to 2^32 rows) and wrapped to 128 bits as ClickHouse's sum is."""
    column = pq.read_table(pa.BufferReader(data), columns=["event_id"]).column("event_id")
    total = 0
    for chunk in column.chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        raw = np.frombuffer(storage.buffers()[1], dtype=">u4")
        limbs = raw[storage.offset * 4 : (storage.offset + len(storage)) * 4].reshape(-1, 4)
        sums = limbs.astype(np.uint64).sum(axis=0)
        total += sum(int(value) << (32 * (3 - i)) for i, value in enumerate(sums))
    return Fingerprint(len(column), str(total % (1 << 128)))


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
    params = _day_params(day)
    expected = await fingerprint(warehouse, day)
    data = await warehouse.formatted(
        f"SELECT {_COLUMNS} FROM {TABLE}{_WHERE_DAY} ORDER BY received_at, event_id",
        params,
        "Parquet",
    )
    key = object_key(day)
    await put(storage, key, data)
    stored = file_fingerprint(await storage.read(key))
    if stored != expected:
        raise ArchiveMismatch(
            f"{key}: the file holds {stored.rows} rows (checksum {stored.checksum}),"
            f" ClickHouse {expected.rows} (checksum {expected.checksum})"
        )
    await record(warehouse, day, expected, len(data))
    return Archived(day, key, expected.rows)


async def put(storage: Storage, key: str, data: bytes) -> None:
    writer = await storage.writer(key)
    try:
        await writer.write(data)
        await writer.close()
    except BaseException:
        await writer.abort()
        raise


async def record(warehouse: Warehouse, day: date, verified: Fingerprint, size: int) -> None:
    """The archive log's entry for a day whose object was verified to hold `verified`."""
    await warehouse.command(
        "INSERT INTO archive_log (table_name, day, object_key, rows, bytes, checksum,"
        " archived_at) VALUES ({table:String}, {day:Date}, {key:String}, {rows:UInt64},"
        " {bytes:UInt64}, {checksum:String}, now64(3))",
        {
            "table": TABLE,
            "day": day,
            "key": object_key(day),
            "rows": verified.rows,
            "bytes": size,
            "checksum": verified.checksum,
        },
    )


async def logged(warehouse: Warehouse) -> dict[date, Fingerprint]:
    """Every archived day with what its verified object holds."""
    rows = await warehouse.rows(
        "SELECT day, rows, checksum FROM archive_log FINAL WHERE table_name = {table:String}",
        {"table": TABLE},
    )
    return {day: Fingerprint(int(n), str(checksum)) for day, n, checksum in rows}


async def archive_days(
    warehouse: Warehouse, storage: Storage, days: list[date]
) -> tuple[list[Archived], dict[date, str]]:
    """Each day tried on its own: one that fails (storage down, a mismatch) stays hot, is
    counted, and is tried again on the next run; the others are archived."""
    done: list[Archived] = []
    failed: dict[date, str] = {}
    for day in days:
        try:
            done.append(await archive_day(warehouse, storage, day))
        except Exception as error:
            ARCHIVE_FAILURES.inc()
            failed[day] = f"{type(error).__name__}: {error}"
    return done, failed


async def days_behind(warehouse: Warehouse, today: date) -> int:
    """Days old enough to archive that the verified archive does not hold; sets the gauge."""
    behind = len(await days_to_archive(warehouse, today))
    ARCHIVE_DAYS_BEHIND.set(behind)
    return behind


async def purgeable(warehouse: Warehouse, today: date) -> list[tuple[date, Fingerprint]]:
    """Hot days past retention that the archive log holds, with what was verified."""
    cutoff = today - timedelta(days=RETENTION_DAYS)
    rows = await warehouse.rows(
        "SELECT day, rows, checksum FROM archive_log FINAL WHERE table_name = {table:String}"
        " AND day < {cutoff:Date} AND day IN (SELECT DISTINCT toDate(received_at)"
        " FROM tracking_events WHERE received_at < {cutoff_ts:DateTime('UTC')}) ORDER BY day",
        {
            "table": TABLE,
            "cutoff": cutoff,
            "cutoff_ts": datetime.combine(cutoff, datetime.min.time(), UTC),
        },
    )
    return [(day, Fingerprint(int(n), checksum)) for day, n, checksum in rows]


async def purge(warehouse: Warehouse, storage: Storage | None, today: date) -> list[date]:
    """Delete raw days past retention whose verified copy still matches them. A day that
    changed since it was archived (rows restored or retried into it) is archived again first,
    when storage is at hand, and otherwise kept."""
    purged: list[date] = []
    for day, verified in await purgeable(warehouse, today):
        if await fingerprint(warehouse, day) != verified:
            if storage is None:
                continue
            done, _ = await archive_days(warehouse, storage, [day])
            if not done:
                continue
        await warehouse.delete_where(
            "tracking_events", "toDate(received_at) = {day:Date}", {"day": day}
        )
        purged.append(day)
    await _purge_funnels_copy(warehouse, today)
    await _purge_sealed_journeys(warehouse, today)
    return purged


async def _purge_funnels_copy(warehouse: Warehouse, today: date) -> None:
    """Days past retention still in visitor_events that tracking_events no longer holds: the
    days just purged, and any a purge cut short, a version before visitor_events or a
    backfill's older snapshot left there. Their verified archive holds them."""
    cutoff = datetime.combine(today - timedelta(days=RETENTION_DAYS), datetime.min.time(), UTC)
    parameters = {"table": TABLE, "cutoff_ts": cutoff}
    strays = await warehouse.rows(
        "SELECT DISTINCT toDate(received_at) AS day FROM visitor_events"
        " WHERE received_at < {cutoff_ts:DateTime('UTC')}"
        " AND day IN (SELECT day FROM archive_log FINAL WHERE table_name = {table:String})"
        " AND day NOT IN (SELECT DISTINCT toDate(received_at) FROM tracking_events"
        " WHERE received_at < {cutoff_ts:DateTime('UTC')}) ORDER BY day",
        parameters,
    )
    for (day,) in strays:
        await warehouse.delete_where(
            "visitor_events", "toDate(received_at) = {day:Date}", {"day": day}
        )


async def _purge_sealed_journeys(warehouse: Warehouse, today: date) -> None:
    """The sealed journeys (sql/0033) of the sessions that started on days past retention
    that tracking_events no longer holds: journeys exist only for the raw days, and these rows
    name visitors."""
    cutoff = datetime.combine(today - timedelta(days=RETENTION_DAYS), datetime.min.time(), UTC)
    strays = await warehouse.rows(
        "SELECT DISTINCT toDate(start_hour) AS day FROM stats_session_journeys"
        " WHERE start_hour < {cutoff_ts:DateTime('UTC')}"
        " AND day IN (SELECT day FROM archive_log FINAL WHERE table_name = {table:String})"
        " AND day NOT IN (SELECT DISTINCT toDate(received_at) FROM tracking_events"
        " WHERE received_at < {cutoff_ts:DateTime('UTC')}) ORDER BY day",
        {"table": TABLE, "cutoff_ts": cutoff},
    )
    for (day,) in strays:
        await warehouse.delete_where(
            "stats_session_journeys", "toDate(start_hour) = {day:Date}", {"day": day}
        )


async def restore_day(warehouse: Warehouse, storage: Storage, day: date) -> int:
    """Load an archived day into `tracking_events_restored` (see its migration for why)."""
    await warehouse.delete_where(
        "tracking_events_restored", "toDate(received_at) = {day:Date}", {"day": day}
    )
    await load_into(warehouse, storage, day, "tracking_events_restored")
    return int(
        await warehouse.scalar(
            "SELECT count() FROM tracking_events_restored WHERE toDate(received_at) = {day:Date}",
            {"day": day},
        )
    )


async def load_into(warehouse: Warehouse, storage: Storage, day: date, table: str) -> None:
    """Insert an archived day's rows into `table` (one with tracking_events' columns)."""
    data = await storage.read(object_key(day))
    columns = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    await warehouse.insert_raw(table, columns, data, "Parquet")
