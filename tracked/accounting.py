"""The ledger of accepted tracking events (`ingest_hourly`, sql/0027): per UTC hour of receipt,
how many were accepted, stored, filtered (by reason), lost (by reason) or wait in the retry
queue, and how long a 202 took to become queryable and to be announced on event.tracked.

The writer adds a batch's lines when it places the batch, under the batch's token, so a
batch placed again after a crash is counted once; the retry job adds the lines of a queued
batch it stores. What is still in the tracking log is counted by the log itself (pending).
Lags are counted in buckets whose bounds grow by 10^(1/20), about 12% apart (whole ms: a few
ms apart below 40 ms): a p50 or p99
read from them is the bound of the bucket it falls in, so it is at most 12% high.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from tracked.row import TrackingRow

TABLE = "ingest_hourly"
COLUMNS = ("hour", "outcome", "reason", "events")
# 1 ms to about 28 hours, 12% apart; the last bucket takes anything slower.
LAG_BOUNDS_MS: tuple[int, ...] = tuple(sorted({round(10 ** (k / 20)) for k in range(0, 161)}))


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    STORED = "stored"
    FILTERED = "filtered"
    LOST = "lost"
    QUEUED = "queued"
    QUERYABLE_MS = "queryable_ms"
    ANNOUNCED_MS = "announced_ms"


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def lag_bucket(lag_ms: float) -> int:
    at = bisect.bisect_left(LAG_BOUNDS_MS, lag_ms)
    return LAG_BOUNDS_MS[min(at, len(LAG_BOUNDS_MS) - 1)]


class Tally:
    """Counts per (hour, outcome, reason), as lines for `ingest_hourly`."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[datetime, str, str]] = Counter()

    def add(
        self, rows: Iterable[TrackingRow], outcome: Outcome, reason: str = "", n: int = 1
    ) -> None:
        for row in rows:
            self.counts[(hour_of(row.received_at), outcome.value, reason)] += n

    def lags(self, rows: Iterable[TrackingRow], at: datetime, outcome: Outcome) -> None:
        for row in rows:
            lag = (at - row.received_at).total_seconds() * 1000
            self.counts[(hour_of(row.received_at), outcome.value, str(lag_bucket(lag)))] += 1

    def lines(self) -> bytes:
        return _encode_lines(
            [(hour, outcome, reason, n) for (hour, outcome, reason), n in self.counts.items() if n]
        )


_encode_lines = msgspec.json.Encoder().encode_lines


def placed(
    read: list[TrackingRow],
    kept: list[TrackingRow],
    stored: list[TrackingRow],
    refused: list[TrackingRow],
    queued: bool,
    at: datetime,
) -> Tally:
    """The lines of a batch the writer placed: `read` from the log, `kept` past the duplicate
    check, then `stored` (or, `queued`, handed to the retry queue) and `refused` for good."""
    tally = Tally()
    tally.add(read, Outcome.ACCEPTED)
    if len(kept) < len(read):
        duplicates = Counter(hour_of(r.received_at) for r in read)
        duplicates.subtract(hour_of(r.received_at) for r in kept)
        for hour, n in duplicates.items():
            tally.counts[(hour, Outcome.FILTERED.value, "duplicate")] += n
    tally.add(refused, Outcome.LOST, "refused")
    if queued:
        tally.add(stored, Outcome.QUEUED)
    else:
        tally.add(stored, Outcome.STORED)
        tally.lags(stored, at, Outcome.QUERYABLE_MS)
    return tally


def retried(
    queued: list[datetime], stored: list[datetime], refused: list[datetime], at: datetime
) -> Tally:
    """The lines of a queued batch the retry job stored (each row by its receive time): out of
    the queue, stored or lost."""
    tally = Tally()
    for received in queued:
        tally.counts[(hour_of(received), Outcome.QUEUED.value, "")] -= 1
    for received in stored:
        tally.counts[(hour_of(received), Outcome.STORED.value, "")] += 1
        lag = (at - received).total_seconds() * 1000
        tally.counts[(hour_of(received), Outcome.QUERYABLE_MS.value, str(lag_bucket(lag)))] += 1
    for received in refused:
        tally.counts[(hour_of(received), Outcome.LOST.value, "refused")] += 1
    return tally


_row = msgspec.json.Decoder(list[Any])


def received_times(lines: bytes, fallback: datetime) -> list[datetime]:
    """Each row's receive time from its JSONCompactEachRow line (the fifth value), read
    without decoding the rest: a line ClickHouse refused may not decode as a row. A line
    without a readable one counts at `fallback`."""
    times = []
    for line in lines.splitlines():
        try:
            received = datetime.fromisoformat(_row.decode(line)[4])
        except (msgspec.DecodeError, ValueError, IndexError, TypeError):
            received = fallback
        times.append(received if received.tzinfo else received.replace(tzinfo=UTC))
    return times
