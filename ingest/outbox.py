"""The `event.tracked` outbox: stored events' messages on disk, for the relay to publish.

Once a batch is stored, its messages are appended here (one write and one fsync per batch, not
per request) and the batch is done as far as the spool is concerned; publishing is the relay's
work (`ingest/relay.py`), in another process with a core of its own, so the broker never costs
the ingest loop anything. A line is the envelope's JSON, which starts with its eventId
(`ID_PREFIX`); before 2026-11-28 lines were `<eventId> <envelope JSON>`, and the relay still
reads those.

Segments live in the process's spool directory: `<ns>.tracked.open` while written, renamed to
`<ns>.tracked` when sealed (every second, and at shutdown; a restart seals what a killed
process left). The relay records how far it got in `.relay-offset`; the relay deletes what it
has published. What the relay has not published is the backlog: on disk, never in memory, and
bounded: past `max_bytes` the oldest sealed segments are dropped here and their messages counted
lost (`analytics_publish_lost_total`, `analytics_events_lost_total{reason="publish_lost"}`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from core.metrics import PUBLISH_LOST, PUBLISHED, lose
from core.rows import TrackingRow
from core.tracked import ROUTING_KEY, envelope_lines

log = logging.getLogger(__name__)

OPEN, SEALED = ".tracked.open", ".tracked"
ID_PREFIX = b'{"eventId":"'  # msgspec writes the envelope's fields in order: the id comes first
ID_END = len(ID_PREFIX) + 36
OFFSET_FILE = ".relay-offset"


class RelayOffset(msgspec.Struct, frozen=True):
    """How far the relay has published in one spool directory (written by the relay)."""

    segment: str = ""  # the segment's stem (`<ns>`); everything before it is published
    offset: int = 0  # bytes of it published
    published: int = 0  # messages this directory's relay has had confirmed, all time


_offset_decoder = msgspec.json.Decoder(RelayOffset)


def read_offset(directory: Path) -> RelayOffset:
    try:
        return _offset_decoder.decode((directory / OFFSET_FILE).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return RelayOffset()


def write_offset(directory: Path, offset: RelayOffset) -> None:
    temporary = directory / f"{OFFSET_FILE}.tmp"
    temporary.write_bytes(msgspec.json.encode(offset))
    os.replace(temporary, directory / OFFSET_FILE)


def stem(path: Path) -> str:
    return path.name.split(".", 1)[0]


def seal_leftovers(directory: Path) -> None:
    """Seal the open segment a killed process left (its complete lines are publishable)."""
    for path in directory.glob(f"*{OPEN}"):
        os.replace(path, path.with_name(stem(path) + SEALED))


@dataclass
class _Segment:
    path: Path
    handle: IO[bytes]
    opened: float
    lines: int = 0
    size: int = 0


class Outbox:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        count_published: bool,
        segment_seconds: float = 1.0,
    ) -> None:
        self.directory = directory
        # In `serve` the relay is a child process without a /metrics of its own: its progress
        # is counted here. `analytics relay` counts its own (and this must not, too).
        self._count_published = count_published
        self._max_bytes = max_bytes
        self._segment_seconds = segment_seconds
        self._current: _Segment | None = None
        self._sealed: dict[str, tuple[int, int]] = {}  # stem -> (lines, bytes), this process's
        self._published_seen = read_offset(directory).published
        self.backlog = 0  # messages the relay has not published, as of the last `maintain`

    def append(self, rows: list[TrackingRow]) -> None:
        """The rows' messages, on disk when this returns (raises OSError otherwise)."""
        if not rows:
            return
        data = envelope_lines(rows)
        segment = self._segment()
        segment.handle.write(data)
        segment.handle.flush()
        os.fsync(segment.handle.fileno())
        segment.lines += len(rows)
        segment.size += len(data)

    def _segment(self) -> _Segment:
        now = time.monotonic()
        if self._current is not None and now - self._current.opened >= self._segment_seconds:
            self.seal()
        if self._current is None:
            path = self.directory / f"{time.time_ns():020d}{OPEN}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._current = _Segment(path, os.fdopen(fd, "ab"), now)
        return self._current

    def seal(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        current.handle.close()
        os.replace(current.path, current.path.with_name(stem(current.path) + SEALED))
        self._sealed[stem(current.path)] = (current.lines, current.size)

    def maintain(self) -> None:
        """Seal an old segment, bound the backlog, and report it and the relay's progress."""
        current = self._current
        if current is not None and time.monotonic() - current.opened >= self._segment_seconds:
            self.seal()
        relayed = read_offset(self.directory)
        if relayed.published > self._published_seen:
            if self._count_published:
                PUBLISHED.labels(ROUTING_KEY).inc(relayed.published - self._published_seen)
            self._published_seen = relayed.published
        for name in list(self._sealed):
            if name < relayed.segment or not (self.directory / f"{name}{SEALED}").exists():
                del self._sealed[name]  # published: the relay deletes what it has sent
        backlog_lines = sum(lines for lines, _ in self._sealed.values())
        backlog_bytes = sum(size for _, size in self._sealed.values())
        if self._current is not None:
            backlog_lines += self._current.lines
            backlog_bytes += self._current.size
        if relayed.segment in self._sealed:
            lines, size = self._sealed[relayed.segment]
            # Bytes of that segment already published, in proportion to its lines.
            done = relayed.offset * lines // size if size else 0
            backlog_lines -= done
            backlog_bytes -= relayed.offset
        while backlog_bytes > self._max_bytes and self._sealed:
            oldest = min(self._sealed)
            lines, size = self._sealed.pop(oldest)
            (self.directory / f"{oldest}{SEALED}").unlink(missing_ok=True)
            if oldest == relayed.segment:
                done = relayed.offset * lines // size if size else 0
                lines, size = lines - done, size - relayed.offset
            PUBLISH_LOST.labels(ROUTING_KEY).inc(lines)
            lose("publish_lost", lines)
            log.error(
                "event.tracked backlog over %d bytes: %d messages dropped", self._max_bytes, lines
            )
            backlog_lines -= lines
            backlog_bytes -= size
        # Reported with this process's publisher's backlog (api/ops.py `refresh_gauges`).
        self.backlog = max(0, backlog_lines)

    def close(self) -> None:
        self.seal()
