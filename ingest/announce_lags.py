"""How long a 202 took to be announced: the relay's count, per UTC hour of receipt, of the
event.tracked messages the broker confirmed, by lag bucket (tracked/accounting.py's buckets).

The relay keeps the current counts and writes them at most once a second (and when it
stops) to one small file per hour beside the tracking log's directories,
`TRACKING_LOG_DIR/.announced-YYYYMMDDHH.json`, adding to what the file holds; a crash costs
at most the last second's counts. A message sent again after a lost connection is counted
again: these are lags, not the ledger of events (`ingest_hourly`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from tracked.accounting import hour_of, lag_bucket

PREFIX = ".announced-"
FLUSH_S = 1.0
_TIMESTAMP = b'"timestamp":"'
_counts = msgspec.json.Decoder(dict[str, int])


def _path(root: Path, hour: datetime) -> Path:
    return root / f"{PREFIX}{hour:%Y%m%d%H}.json"


class AnnounceLags:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._pending: dict[datetime, Counter[str]] = {}
        self._flushed = time.monotonic()

    def confirmed(self, bodies: list[bytes]) -> None:
        """Count messages the broker just confirmed (their `timestamp` is the 202's time)."""
        now = datetime.now(UTC)
        for body in bodies:
            at = body.find(_TIMESTAMP)
            if at < 0:
                continue
            start = at + len(_TIMESTAMP)
            try:
                received = datetime.fromisoformat(body[start : body.index(b'"', start)].decode())
            except ValueError:
                continue
            lag = (now - received).total_seconds() * 1000
            self._pending.setdefault(hour_of(received), Counter())[str(lag_bucket(lag))] += 1
        self.tick()

    def tick(self) -> None:
        """Write what is counted if a second has passed since the last write (the relay calls
        this on every pass, so counts do not wait for the next confirm)."""
        if self._pending and time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self._flushed = time.monotonic()
        for hour, counts in self._pending.items():
            path = _path(self._root, hour)
            merged = Counter(read_hour(path))
            merged.update(counts)
            partial = path.with_name(path.name + ".partial")
            with contextlib.suppress(OSError):  # a full disk: kept for the next flush
                partial.write_bytes(msgspec.json.encode(dict(merged)))
                os.replace(partial, path)
                counts.clear()
        self._pending = {h: c for h, c in self._pending.items() if c}


def read_hour(path: Path) -> dict[str, int]:
    try:
        return _counts.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return {}


def read(root: Path, hours: list[datetime]) -> Counter[int]:
    """The announce lags of messages received in `hours`, by bucket bound (ms)."""
    total: Counter[int] = Counter()
    for hour in hours:
        for bucket, n in read_hour(_path(root, hour)).items():
            total[int(bucket)] += n
    return total
