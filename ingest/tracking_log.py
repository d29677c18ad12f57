"""The tracking log: the one write-ahead log that owns the durability of accepted events.

Its consumers are the ClickHouse batch writer (in this process) and the `event.tracked` relay
(another process, `ingest/relay.py`); the format and the consumers' committed offsets are in
`ingest/log_files.py`.

- `append`: a request's rows, on disk before its 202. Every request that arrives in one turn of
  the event loop shares one write (on the loop: it only copies into the page cache) and one
  fsync, made by a helper process (`ingest/fsync_helper.py`) so that the loop never waits on
  the disk: a group's answers are released together when the helper's answer arrives, one
  wake-up per group. Rows are then handed to the writer (and numbered) in the order they were
  written, whether or not the request is still there to answer.
- `announce`: once the writer has stored a batch, the batch's `event.tracked` messages, in the
  same segments and the same group writes and fsyncs; the batch counts as done for the writer
  (its committed offset moves) once they are durable. The relay publishes them from disk.
- Segments rotate every `segment_seconds`. A sealed segment is deleted once the writer has
  stored or handed off every row in it and the relay has read past it. What the relay has not
  published is its backlog: on disk, never in memory, bounded by `max_backlog_bytes` of
  messages (past it the relay is told to skip the oldest segments, and their messages are
  counted lost).
- `replay`: at start-up the segments a stopped process left (killed, say) are taken over, from
  its writer's committed offset: rows ClickHouse lacks go through the writer and the session
  step like live traffic; stored rows whose message is not in the log are announced again
  (at least once); the stopped process's messages are published by the relay from its
  directory as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from core.clickhouse import Warehouse
from core.metrics import PUBLISH_LOST, PUBLISHED, lose
from core.rows import TrackingRow
from core.tracked import ROUTING_KEY, envelope_lines
from ingest.fsync_helper import FsyncHelper
from ingest.log_files import (
    ID_END,
    ID_PREFIX,
    OWNER_LOCK,
    RELAY_FLOOR,
    ROW_START,
    SEGMENT,
    WRITER_OFFSET,
    RelayOffset,
    cut_torn_line,
    read_mark,
    read_relay_offset,
    stem,
    write_mark,
)
from ingest.writer import BatchWriter
from materialized.tracking import stored_event_ids

log = logging.getLogger(__name__)
_encode_lines = msgspec.json.Encoder().encode_lines
_decode_row = msgspec.json.Decoder(TrackingRow).decode


@dataclass
class _Segment:
    path: Path
    fd: int
    opened: float
    max_seq: int = 0  # the writer's sequence number just past its last row (0: none)
    syncing: int = 0  # groups written here whose fsync has not been confirmed yet
    sealed: bool = False
    messages: int = 0  # event.tracked lines this process wrote here
    message_bytes: int = 0

    def seal(self) -> None:
        self.sealed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Announced:
    """The messages of one stored batch: settled once they are durable in the log."""

    __slots__ = ("settled",)

    def __init__(self) -> None:
        self.settled = False


@dataclass
class _Pending:
    data: bytes
    rows: list[TrackingRow] | None = None  # accepted rows (None: messages)
    done: asyncio.Future[None] | None = None
    announced: Announced | None = None
    messages: int = 0


class TrackingLog:
    def __init__(
        self,
        directory: Path,
        writer: BatchWriter[TrackingRow],
        *,
        max_backlog_bytes: int,
        count_published: bool,
        segment_seconds: float = 1.0,
        locks: list[int] | None = None,
        adopted: set[Path] | None = None,
    ) -> None:
        self.directory = directory
        self._writer = writer
        self._max_backlog_bytes = max_backlog_bytes
        # In `serve` the relay is a child process without a /metrics of its own: its progress
        # is counted here. `analytics relay` counts its own (and this must not, too).
        self._count_published = count_published
        self._segment_seconds = segment_seconds
        self._locks = locks or []  # flocks on this log and on the stopped ones it replays
        self._adopted = adopted or set()  # the stopped processes' directories
        self._pending: list[_Pending] = []
        self._segments: list[_Segment] = []  # own, oldest first (the last may be open)
        self._taken: list[_Segment] = []  # stopped processes' segments, until trimmed
        self._task: asyncio.Task[None] | None = None
        self._scheduled = False
        self._helper = FsyncHelper()
        self._announced = 0  # messages written to this directory, all time
        self._lost = 0  # of those, skipped past the backlog bound
        self._published_seen = 0
        # The marks this log writes in its own directory (nobody else does), kept here so
        # maintenance does not read them back.
        self._writer_mark = ""
        self._floor = ""
        self.backlog = 0  # messages the relay has not published, as of the last `maintain`

    # -- start and stop

    async def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            await self._helper.start()
        except OSError as error:  # then the loop fsyncs itself
            log.warning("tracking log: no fsync helper (%s); fsyncing on the event loop", error)
        self._task = asyncio.create_task(self._maintain_loop(), name="tracking-log")

    async def close(self) -> None:
        """Commit what is waiting and seal; segments stay until both consumers are past them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._commit_now()
        await self._helper.stop()
        for segment in self._segments:
            segment.seal()
        self.maintain()

    async def relayed(self, within: float) -> bool:
        """Wait up to `within` seconds for the relay to read past every segment the writer is
        done with (and trim them); True if it did. Segments whose rows the writer still holds
        stay for the next start whatever the relay does, so they are not waited for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self.trim()
            done = self._writer.done_through
            waiting = [
                s
                for s in (*self._segments, *self._taken)
                if s.sealed and self._written_by_writer(s, done)
            ]
            if not waiting:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def release(self) -> None:
        """Let go of the directories' locks: the last step of shutdown, after `trim`. What is
        left is the relay's to finish (and delete), or the next process's to take over."""
        self.trim()
        for directory in {self.directory} | self._adopted:
            (directory / OWNER_LOCK).unlink(missing_ok=True)
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    # -- the two kinds of record

    async def append(self, rows: list[TrackingRow]) -> None:
        """Returns once `rows` are on disk and in the batch writer's hands."""
        done = asyncio.get_running_loop().create_future()
        self._queue(_Pending(_encode_lines(rows), rows=rows, done=done))
        await done

    def announce(self, rows: list[TrackingRow]) -> Announced:
        """Queue the stored `rows`' event.tracked messages; settled once durable."""
        announced = Announced()
        if not rows:
            announced.settled = True
            return announced
        self._queue(_Pending(envelope_lines(rows), announced=announced, messages=len(rows)))
        return announced

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if not self._scheduled:
            # Everything queued in this turn of the loop shares the write and the fsync.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_now)

    def _commit_now(self) -> None:
        """Write the waiting records and have them fsynced; `_settle` answers them."""
        self._scheduled = False
        group, self._pending = self._pending, []
        if not group:
            return
        try:
            segment = self._current()
            data = b"".join(p.data for p in group)
            _write_all(segment.fd, data)
            if not self._helper.running:
                os.fsync(segment.fd)  # no helper: on the loop (about 0.2 ms here)
        except OSError as error:
            self._fail(group, error)
            return
        for pending in group:
            if pending.messages:
                segment.messages += pending.messages
                segment.message_bytes += len(pending.data)
                self._announced += pending.messages
        if not self._helper.running:
            self._settle(group, segment)
            return
        segment.syncing += 1

        def synced(error: OSError | None) -> None:
            segment.syncing -= 1
            if error is None:
                self._settle(group, segment)
            else:
                self._fail(group, error)

        self._helper.sync(segment.path, synced)

    def _settle(self, group: list[_Pending], segment: _Segment) -> None:
        for pending in group:
            if pending.rows is not None:
                # Durable, so stored even if the client went away meanwhile (it got no 202
                # and may send the events again: the eventId check drops the copy).
                segment.max_seq = self._writer.add(pending.rows)
                if pending.done is not None and not pending.done.done():
                    pending.done.set_result(None)
            elif pending.announced is not None:
                pending.announced.settled = True

    def _fail(self, group: list[_Pending], error: OSError) -> None:
        for pending in group:
            if pending.done is not None and not pending.done.done():
                pending.done.set_exception(error)  # the request answers 503
            elif pending.announced is not None:
                # The events are stored; their messages could not be made durable.
                PUBLISH_LOST.labels(ROUTING_KEY).inc(pending.messages)
                lose("publish_lost", pending.messages)
                log.error("tracking log unwritable, %d messages lost: %s", pending.messages, error)
                pending.announced.settled = True

    def _current(self) -> _Segment:
        now = time.monotonic()
        if self._segments and not self._segments[-1].sealed:
            current = self._segments[-1]
            if now - current.opened < self._segment_seconds:
                return current
            current.seal()
        path = self.directory / f"{time.time_ns():020d}{SEGMENT}"
        # Owner-only: accepted events hold what visitors did on the site.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = _Segment(path, fd, now)
        self._segments.append(segment)
        return segment

    # -- consumers' offsets: trimming, the backlog

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self._segment_seconds, 1.0) / 2)
            try:
                self.maintain()
            except OSError:
                log.exception("tracking log maintenance failed")

    def maintain(self) -> None:
        """Seal an old segment, delete what both consumers are past, commit the writer's
        offset, bound the relay's backlog and report it."""
        if self._segments and not self._segments[-1].sealed:
            current = self._segments[-1]
            if time.monotonic() - current.opened >= self._segment_seconds:
                current.seal()
        relay = read_relay_offset(self.directory)
        self._bound_backlog(relay)
        self.trim({self.directory: (relay, self._floor)})
        self._commit_writer_offset()

    def _written_by_writer(self, segment: _Segment, done: int) -> bool:
        return segment.syncing == 0 and segment.max_seq <= done

    def trim(self, known: dict[Path, tuple[RelayOffset, str]] | None = None) -> int:
        """Delete sealed segments every consumer is past; returns how many. `known`: relay
        offsets and floors already read, by directory."""
        done = self._writer.done_through
        relays = dict(known or {})
        removed = 0
        for segments in (self._segments, self._taken):
            for segment in list(segments):
                if not (segment.sealed and self._written_by_writer(segment, done)):
                    continue
                directory = segment.path.parent
                if directory not in relays:
                    relays[directory] = (
                        read_relay_offset(directory),
                        read_mark(directory / RELAY_FLOOR),
                    )
                relay, floor = relays[directory]
                if _relay_past(segment.path, relay, floor):
                    segment.path.unlink(missing_ok=True)
                    segments.remove(segment)
                    removed += 1
        return removed

    def _commit_writer_offset(self) -> None:
        """Every segment before the mark holds only rows the writer is done with."""
        done = self._writer.done_through
        for segment in self._segments:
            if not (segment.sealed and self._written_by_writer(segment, done)):
                mark = stem(segment.path)
                break
        else:
            # All done: past the newest segment (a later one sorts after this mark).
            mark = stem(self._segments[-1].path) + "~" if self._segments else ""
        if mark and mark != self._writer_mark:
            write_mark(self.directory / WRITER_OFFSET, mark)
            self._writer_mark = mark

    def _bound_backlog(self, relay: RelayOffset) -> None:
        if relay.published > self._published_seen:
            if self._count_published:
                PUBLISHED.labels(ROUTING_KEY).inc(relay.published - self._published_seen)
            self._published_seen = relay.published
        start = max(relay.segment, self._floor)
        ahead = [s for s in self._segments if stem(s.path) >= start and s.messages]
        waiting = sum(s.message_bytes for s in ahead)  # counts the relay's segment whole
        backlog = max(0, self._announced - relay.published - self._lost)
        if waiting > self._max_backlog_bytes:
            beyond = sum(s.messages for s in ahead if stem(s.path) > relay.segment)
            lost, floor = 0, self._floor
            while ahead and waiting > self._max_backlog_bytes:
                oldest = ahead.pop(0)
                oldest.seal()  # nothing more is written where the relay is told to skip
                waiting -= oldest.message_bytes
                floor = stem(oldest.path) + "~"
                if stem(oldest.path) == relay.segment:  # the part it has not read yet
                    lost += max(0, backlog - beyond)
                else:
                    lost += oldest.messages
            write_mark(self.directory / RELAY_FLOOR, floor)
            self._floor = floor
            self._lost += lost
            backlog -= lost
            PUBLISH_LOST.labels(ROUTING_KEY).inc(lost)
            lose("publish_lost", lost)
            log.error(
                "event.tracked backlog over %d bytes: %d messages dropped",
                self._max_backlog_bytes,
                lost,
            )
        # Reported with this process's publisher's backlog (api/ops.py `refresh_gauges`).
        self.backlog = backlog

    # -- taking over a stopped process's log

    async def replay(
        self,
        warehouse: Warehouse,
        segments: list[Path],
        replaying: Callable[[list[TrackingRow]], None],
    ) -> None:
        """Take over a stopped process's segments (those from its writer's committed offset
        on): their rows ClickHouse does not have go to the batch writer like live traffic
        (ahead of it: nothing new is added before this returns), through the session step
        (`replaying` tells it they are no duplicates even if the stopped process got as far as
        marking them seen). Stored rows without their message in the log are announced again
        (at least once; consumers drop a re-send by eventId). Every segment is deleted as this
        log's own are, once the writer is done with its rows and the relay has read past it."""
        by_directory: dict[Path, list[Path]] = {}
        for path in segments:
            by_directory.setdefault(path.parent, []).append(path)
        again = taken = 0
        for directory, paths in by_directory.items():
            mark = read_mark(directory / WRITER_OFFSET)
            announced: set[bytes] = set()
            pending: list[tuple[Path, dict[uuid.UUID, TrackingRow]]] = []
            for path in paths:
                if stem(path) < mark:  # its rows were stored; only the relay needs it
                    self._taken.append(_Segment(path, -1, 0.0, sealed=True))
                    continue
                rows: dict[uuid.UUID, TrackingRow] = {}
                for line in path.read_bytes().splitlines():
                    if line.startswith(ID_PREFIX):
                        announced.add(line[len(ID_PREFIX) : ID_END])
                    elif line.startswith(ROW_START):
                        try:
                            row = _decode_row(line)
                        except msgspec.DecodeError:
                            log.error("%s: skipping a line that does not decode", path)
                            continue
                        rows.setdefault(row.event_id, row)  # a beacon sent twice is one event
                pending.append((path, rows))
            for path, rows in pending:
                stored = await stored_event_ids(warehouse, list(rows.values())) if rows else set()
                missing = [row for event_id, row in rows.items() if event_id not in stored]
                unannounced = [
                    row
                    for event_id, row in rows.items()
                    if event_id in stored and str(event_id).encode() not in announced
                ]
                self.announce(unannounced)
                again += len(unannounced)
                segment = _Segment(path, -1, 0.0, sealed=True)
                if missing:
                    replaying(missing)
                    segment.max_seq = self._writer.add(missing)
                    taken += len(missing)
                self._taken.append(segment)
        if segments:
            log.info(
                "tracking log: %d segments of stopped processes: %d events to store,"
                " %d announced again",
                len(segments),
                taken,
                again,
            )


def _relay_past(path: Path, relay: RelayOffset, floor: str) -> bool:
    name = stem(path)
    if name < floor or name < relay.segment:
        return True
    if name == relay.segment:
        with contextlib.suppress(FileNotFoundError):
            return relay.offset >= path.stat().st_size
        return True
    return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _lock(directory: Path) -> int | None:
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


@dataclass
class Opened:
    log: TrackingLog
    leftovers: list[Path] = field(default_factory=list)  # stopped processes' segments


def open_log(
    directory: str,
    writer: BatchWriter[TrackingRow],
    *,
    max_backlog_bytes: int,
    count_published: bool,
    segment_seconds: float = 1.0,
) -> Opened:
    """This process's log (`<directory>/<random boot id>`, locked while the process lives),
    and the segments of every other log whose lock could be taken (its process is gone), to
    replay first. A PID would not do as the name: after a container restart the service is
    PID 1 again, and a directory named after a live PID would never be replayed."""
    root = Path(directory).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    own = root / uuid.uuid4().hex
    own_lock = _lock(own)
    assert own_lock is not None  # a fresh random name: nobody else holds it
    locks = [own_lock]
    adopted: set[Path] = set()
    leftovers: list[Path] = []
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p != own):
        lock = _lock(other)
        if lock is None:
            continue  # a live process's log
        locks.append(lock)  # held until this process ends: nobody else replays it meanwhile
        adopted.add(other)
        segments = sorted(other.glob(f"*{SEGMENT}"))
        if segments:
            cut_torn_line(segments[-1])  # only the newest was being written
        leftovers.extend(segments)
    made = TrackingLog(
        own,
        writer,
        max_backlog_bytes=max_backlog_bytes,
        count_published=count_published,
        segment_seconds=segment_seconds,
        locks=locks,
        adopted=adopted,
    )
    return Opened(made, leftovers)
