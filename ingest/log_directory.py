"""One directory of the tracking log as its owner sees it: its segments, the writer's mark,
the decoded rows of its unread segments, and the file operations on them (`ingest/log_files.py`
has the format; `ingest/tracking_log.py` the group writes, reads and maintenance)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from core.metrics import LOG_DAMAGE
from ingest.log_files import (
    OWNER_LOCK,
    ROW_START,
    SEGMENT,
    WRITER_OFFSET,
    complete,
    last_commit,
    read_mark,
    segments,
    stem,
)
from tracked.row import TrackingRow

log = logging.getLogger(__name__)
_decode_row = msgspec.json.Decoder(TrackingRow).decode

_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1
RESERVE_BYTES = 256 * 1024


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the blocks a write will need, or raise ENOSPC before anything is written."""
    if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, ctypes.c_int64(offset), ctypes.c_int64(length)):
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS):  # then the write itself finds out
            raise OSError(code, os.strerror(code))


@dataclass
class Segment:
    path: Path
    name: str = field(init=False)  # the stem: where it sorts in the log
    fd: int = -1
    size: int = 0  # bytes of whole lines
    reserved: int = 0  # bytes allocated ahead of the writes (fallocate), up to here
    rows: int = 0  # accepted events in it
    syncing: int = 0  # groups written here whose fsync has not been confirmed yet
    sealed: bool = False
    messages: int = 0  # event.tracked lines this process wrote here
    message_bytes: int = 0

    def __post_init__(self) -> None:
        self.name = stem(self.path)

    def reserve(self, length: int) -> None:
        """Make sure the next `length` bytes have their blocks, RESERVE_BYTES at a time (one
        call per chunk, not per group), or raise ENOSPC before anything is written."""
        end = self.size + length
        if end > self.reserved:
            ahead = max(length, RESERVE_BYTES)
            reserve(self.fd, self.size, ahead)
            self.reserved = self.size + ahead

    def seal(self) -> None:
        self.sealed = True
        if self.fd >= 0:
            if self.reserved > self.size:
                with contextlib.suppress(OSError):  # give back the blocks reserved ahead
                    os.ftruncate(self.fd, self.size)
            os.close(self.fd)
            self.fd = -1


@dataclass
class Directory:
    path: Path
    lock: int
    own: bool
    segments: list[Segment] = field(default_factory=list)  # oldest first; the last may be open
    placed: str = ""  # the writer's mark: every segment sorting before it is placed
    taken: str = ""  # past the last segment handed to the writer (placed or in its hands)
    mark_written: str = ""  # the mark as last copied to `.writer-offset`
    unread: int = 0  # accepted rows not yet placed
    cache: dict[str, list[TrackingRow]] = field(default_factory=dict)  # segment -> its rows
    floor: str = ""  # the relay's floor (the backlog bound), own directory only
    announced: int = 0  # messages written here by this process
    lost: int = 0  # of those, skipped past the backlog bound

    def open_segment(self) -> Segment:
        if self.segments and not self.segments[-1].sealed:
            return self.segments[-1]
        path = self.path / f"{time.time_ns():020d}{SEGMENT}"
        if self.segments and stem(path) <= self.segments[-1].name:  # a clock stepped back
            path = self.path / f"{int(self.segments[-1].name) + 1:020d}{SEGMENT}"
        # Owner-only: accepted events hold what visitors did on the site.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = Segment(path, fd)
        self.segments.append(segment)
        return segment


@dataclass(slots=True)
class Batch:
    """One sealed segment's rows, as the writer reads them."""

    directory: Directory
    segment: Segment
    rows: list[TrackingRow]

    @property
    def token(self) -> str:
        """The insert token: the same segment gives the same token in any process."""
        name = f"{self.directory.path.name}/{self.segment.name}"
        return hashlib.sha256(name.encode()).hexdigest()[:32]

    @property
    def owner(self) -> int:
        """The batch's id in its rows' claims on their event ids (32 bits of the token)."""
        return int(self.token[:8], 16)


def read_rows(path: Path) -> list[TrackingRow]:
    """The accepted rows of a sealed segment on disk; a torn tail is stepped over, counted."""
    data = path.read_bytes()
    whole = complete(data)
    if len(whole) < len(data):
        LOG_DAMAGE.labels("writer", "torn_tail").inc()
        log.warning("%s: stepping over a torn tail of %d bytes", path, len(data) - len(whole))
    rows = []
    for line in whole.split(b"\n"):
        if line.startswith(ROW_START):
            try:
                rows.append(_decode_row(line))
            except msgspec.DecodeError:
                LOG_DAMAGE.labels("writer", "undecodable").inc()
                log.error("%s: skipping a line that does not decode", path)
    return rows


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def lock_directory(directory: Path) -> int | None:
    """An exclusive flock on `directory`'s lock file, or None when a live process holds it.
    The kernel drops the lock when its holder dies, however it dies."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def take_over(path: Path, lock: int) -> Directory:
    """A stopped process's directory: its writer's mark is its last commit line (or its
    `.writer-offset`, whichever is further), and every segment in it is complete."""
    directory = Directory(path, lock, own=False)
    directory.placed = directory.mark_written = read_mark(path / WRITER_OFFSET)
    for segment_path in segments(path):
        data = segment_path.read_bytes()
        whole = complete(data)
        segment = Segment(segment_path, size=len(whole), sealed=True)
        segment.rows = whole.count(b"\n" + ROW_START) + whole.startswith(ROW_START)
        directory.placed = max(directory.placed, last_commit(whole))
        directory.segments.append(segment)
    directory.unread = sum(s.rows for s in directory.segments if s.name >= directory.placed)
    return directory
