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


def _hour(index: int) -> datetime:
    return datetime.fromtimestamp(index * 3600, UTC)


class Tally:
    """Counts per (hour, outcome, reason), as lines for `ingest_hourly`. Rows come as their
    receive times in Unix seconds, a whole list at a time, counted by the hour's index: this
    runs on the writer's loop for every batch, and a datetime per row would cost more than
    the rest of the batch's bookkeeping."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[datetime, str, str]] = Counter()

    def add(self, stamps: list[float], outcome: Outcome, reason: str = "", sign: int = 1) -> None:
        name = outcome.value
        for hour, n in Counter([int(s // 3600) for s in stamps]).items():
            self.counts[(_hour(hour), name, reason)] += sign * n

    def lags(self, stamps: list[float], at: datetime, outcome: Outcome) -> None:
        now, bounds, last = at.timestamp(), LAG_BOUNDS_MS, len(LAG_BOUNDS_MS) - 1
        found = Counter(
            [
                (int(s // 3600), bounds[min(bisect.bisect_left(bounds, (now - s) * 1000), last)])
                for s in stamps
            ]
        )
        name = outcome.value
        for (hour, bound), n in found.items():
            self.counts[(_hour(hour), name, str(bound))] += n

    def lines(self) -> bytes:
        return _encode_lines(
            [(hour, outcome, reason, n) for (hour, outcome, reason), n in self.counts.items() if n]
        )


_encode_lines = msgspec.json.Encoder().encode_lines


def stamps(received: list[datetime]) -> list[float]:
    return [t.timestamp() for t in received]


def _stamps(rows: list[TrackingRow]) -> list[float]:
    return [row.received_at.timestamp() for row in rows]


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
    accepted = _stamps(read)
    tally.add(accepted, Outcome.ACCEPTED)
    if len(kept) < len(read):
        tally.add(accepted, Outcome.FILTERED, "duplicate")
        tally.add(_stamps(kept), Outcome.FILTERED, "duplicate", sign=-1)
    tally.add(_stamps(refused), Outcome.LOST, "refused")
    placed_at = accepted if stored is read else _stamps(stored)
    if queued:
        tally.add(placed_at, Outcome.QUEUED)
    else:
        tally.add(placed_at, Outcome.STORED)
        tally.lags(placed_at, at, Outcome.QUERYABLE_MS)
    return tally


def retried(
    queued: list[datetime], stored: list[datetime], refused: list[datetime], at: datetime
) -> Tally:
    """The lines of a queued batch the retry job stored (each row by its receive time): out of
    the queue, stored or lost."""
    tally = Tally()
    tally.add(stamps(queued), Outcome.QUEUED, sign=-1)
    kept = stamps(stored)
    tally.add(kept, Outcome.STORED)
    tally.lags(kept, at, Outcome.QUERYABLE_MS)
    tally.add(stamps(refused), Outcome.LOST, "refused")
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
