"""An archived day rewritten without a user's rows (materialized/erasure.py).

The day's Parquet object is read, the rows of the user or of their sessions left out, and
the rest written to a side object first; that copy is read back and must hold exactly the
rows kept (their count and id checksum, as archive.py verifies a day) and none of the user's.
Only then does it replace the day's object, which is read back and checked the same way, and
the archive log records the day's new figures (so purging, which compares a hot day with its
verified copy, stays right). Run again, a day already rewritten holds none of the user's rows
and is left alone but for its log entry.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.clickhouse import Warehouse
from core.storage import Storage
from materialized import archive


@dataclass(frozen=True, slots=True)
class Rewritten:
    day: date
    removed: int
    sessions: frozenset[uuid.UUID]  # the user's sessions the day held


def _ids(column: pa.ChunkedArray) -> pa.Array:
    """A UUID column as 16-byte binary values (ClickHouse writes them as FixedString(16))."""
    chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in column.chunks]
    if not chunks:
        return pa.array([], type=pa.binary(16))
    return pa.concat_arrays(chunks)


def _matching(table: pa.Table, user: uuid.UUID, sessions: set[uuid.UUID]) -> pa.Array:
    users = _ids(table.column("user_id"))
    kind = users.type
    mine = pc.fill_null(pc.is_in(users, value_set=pa.array([user.bytes], type=kind)), False)
    found = {
        uuid.UUID(bytes=bytes(s))
        for s in pc.filter(_ids(table.column("session_id")), mine).to_pylist()
    }
    every = sorted(sessions | found, key=lambda s: s.bytes)
    in_session = pc.is_in(
        _ids(table.column("session_id")), value_set=pa.array([s.bytes for s in every], type=kind)
    )
    return pc.or_(mine, in_session)


def sessions_in(data: bytes, user: uuid.UUID) -> set[uuid.UUID]:
    """The sessions a day's object holds the user signed in on."""
    table = pq.read_table(pa.BufferReader(data), columns=["user_id", "session_id"])
    users = _ids(table.column("user_id"))
    mine = pc.fill_null(pc.is_in(users, value_set=pa.array([user.bytes], type=users.type)), False)
    chosen = pc.filter(_ids(table.column("session_id")), mine).to_pylist()
    return {uuid.UUID(bytes=bytes(s)) for s in chosen}


class RewriteMismatch(RuntimeError):
    """A rewritten copy read back is not the day without the user's rows."""


def _without(data: bytes, user: uuid.UUID, sessions: set[uuid.UUID]) -> tuple[bytes, int]:
    table = pq.read_table(pa.BufferReader(data))
    drop = _matching(table, user, sessions)
    removed = pc.sum(drop).as_py() or 0
    if not removed:
        return data, 0
    kept = table.filter(pc.invert(drop))
    out = io.BytesIO()
    pq.write_table(kept, out, compression="zstd")
    return out.getvalue(), int(removed)


async def _check(
    storage: Storage,
    key: str,
    expected: archive.Fingerprint,
    user: uuid.UUID,
    sessions: set[uuid.UUID],
) -> None:
    stored = await storage.read(key)
    if archive.file_fingerprint(stored) != expected:
        raise RewriteMismatch(f"{key}: the copy read back is not the rows kept")
    table = pq.read_table(pa.BufferReader(stored), columns=["user_id", "session_id"])
    if pc.sum(_matching(table, user, sessions)).as_py():
        raise RewriteMismatch(f"{key}: the copy read back still holds the user's rows")


async def rewrite_day(
    warehouse: Warehouse,
    storage: Storage,
    day: date,
    user: uuid.UUID,
    sessions: set[uuid.UUID],
    replace_suffix: str,
    logged: dict[date, archive.Fingerprint],
) -> Rewritten:
    """Rewrite `day`'s object without the user's rows and those of `sessions` (and of the
    sessions the day itself shows them on); `logged`: the archive log's figures."""
    key = archive.object_key(day)
    data = await storage.read(key)
    found = sessions_in(data, user)
    kept, removed = _without(data, user, sessions | found)
    expected = archive.file_fingerprint(kept)
    if removed:
        # A verified side copy first: the day's object is replaced only by a good one.
        side = f"{key}.{replace_suffix}"
        await archive.put(storage, side, kept)
        await _check(storage, side, expected, user, sessions | found)
        await archive.put(storage, key, kept)
        await _check(storage, key, expected, user, sessions | found)
        await storage.delete(side)
    if logged.get(day) != expected:
        await archive.record(warehouse, day, expected, len(kept))
    return Rewritten(day, removed, frozenset(found))
