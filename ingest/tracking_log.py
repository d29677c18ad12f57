"""The tracking log: the one durable record of accepted events (format: `ingest/log_files.py`).

Data flows one way: request → log → {writer → ClickHouse, relay → RabbitMQ}.

- `append`: a request's rows, on disk before its 202. Every request that arrives in one turn of
  the event loop shares one write (on the loop: it only copies into the page cache) and one
  fsync, made by a helper process (`ingest/fsync_helper.py`) so that the loop never waits on
  the disk. Space is reserved ahead of the writes (`fallocate`, 256 KiB at a time), so a full
  disk refuses a group before a byte of it is written; a write that still fails part-way is
  cut back to the segment's last whole line, and the segment is sealed if even that fails.
  The group answers 503 and nothing of it is ever read.
- A segment is sealed when it holds a batch's worth of rows or when the writer's timer asks,
  and is then one batch: read again after a crash it is the same batch, so its insert token
  (from the directory and segment names) makes ClickHouse store it once however often it is
  written.
- `next_batch` is the writer's read: the oldest sealed segment past its committed mark. The
  decoded rows of segments this process wrote are kept until the writer reads them (the same
  rows the file holds, so they are not decoded again); a stopped process's segments are read
  from disk. Either way the batch, its token and its commit are the same.
- `commit`: once ClickHouse or the retry queue holds a batch, its `event.tracked` messages and
  the writer's commit line go into the log in one group write; when that is durable the
  writer's mark moves past the batch. The relay publishes the messages from disk.
- `maintain`: trims segments both readers are past, copies the writer's mark to
  `.writer-offset` for the relay, bounds the relay's backlog, lets go of stopped processes'
  directories once their rows are placed, and notices a directory removed under it.
- At start-up the directories of stopped processes (their flock is free) are taken over:
  their writer's mark is the last commit line in them, and their segments past it are read by
  the same `next_batch` as live traffic. Their messages and commits are written in their own
  directory, so each directory stays self-contained whatever happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from core.metrics import LOG_DAMAGE, PUBLISH_LOST, PUBLISHED, lose
from ingest.fsync_helper import FsyncHelper
from ingest.log_directory import (
    Batch,
    Directory,
    Segment,
    lock_directory,
    read_rows,
    take_over,
    write_all,
)
from ingest.log_files import (
    OWNER_LOCK,
    RELAY_FLOOR,
    WRITER_OFFSET,
    RelayOffset,
    commit_line,
    mark_past,
    read_mark,
    read_relay_offset,
    stem,
    write_mark,
)
from tracked.accounting import hour_of
from tracked.message import ROUTING_KEY, envelope_lines
from tracked.row import TrackingRow

log = logging.getLogger(__name__)
_encode_lines = msgspec.json.Encoder().encode_lines


@dataclass(slots=True)
class _Pending:
    directory: Directory
    data: bytes
    done: asyncio.Future[None]
    rows: list[TrackingRow] | None = None  # accepted rows (None: a commit)
    batch: Batch | None = None
    messages: int = 0


class TrackingLog:
    def __init__(
        self,
        own: Directory,
        adopted: list[Directory],
        *,
        rows_per_segment: int,
        max_backlog_bytes: int,
        count_published: bool,
    ) -> None:
        self.directory = own.path
        self._own = own
        self._directories = [*adopted, own]  # the writer reads them in this order
        self._rows_per_segment = rows_per_segment
        self._max_backlog_bytes = max_backlog_bytes
        # In `serve` the relay is a child process without a /metrics of its own: its progress
        # is counted here. `analytics relay` counts its own (and this must not, too).
        self._count_published = count_published
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._helper = FsyncHelper()
        self._published_seen = 0
        self._last_failure = ""
        self._closed = False
        self.ready = asyncio.Event()  # set when a sealed segment with rows is durable
        self.backlog = 0  # messages the relay has not published, as of the last `maintain`
        if any(d.unread for d in adopted):
            self.ready.set()

    # -- start and stop

    async def start(self) -> None:
        try:
            await self._helper.start()
        except OSError as error:  # then the loop fsyncs itself
            log.warning("tracking log: no fsync helper (%s); fsyncing on the event loop", error)
        self._task = asyncio.create_task(self._maintain_loop(), name="tracking-log")

    async def close(self) -> None:
        """Write what is waiting and seal; segments stay until both readers are past them.
        A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._commit_now()
        await self._helper.stop()
        for directory in self._directories:
            for segment in directory.segments:
                segment.seal()
            if directory.segments and not directory.unread:
                # Every row is placed: what is left is messages, the relay's to finish.
                directory.placed = max(directory.placed, mark_past(directory.segments[-1].name))
        self.maintain()

    async def relayed(self, within: float) -> bool:
        """Wait up to `within` seconds for the relay to read every message in the log (and
        trim what both readers are past); True if it did. Unplaced rows stay for the next
        start anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self.trim()
            if not self._unrelayed():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def _unrelayed(self) -> bool:
        for directory in self._directories:
            relay = read_relay_offset(directory.path)
            floor = read_mark(directory.path / RELAY_FLOOR)
            for segment in directory.segments:
                # A stopped process's segments may hold messages it wrote: all of them count.
                if (segment.messages or not directory.own) and not _relay_past(
                    segment.path, relay, floor
                ):
                    return True
        return False

    def release(self) -> None:
        """Let go of the directories' locks: the last step of shutdown. What is left is the
        relay's to finish (and delete), or the next process's to take over."""
        self.trim()
        for directory in self._directories:
            self._let_go(directory)

    @staticmethod
    def _let_go(directory: Directory) -> None:
        if directory.lock >= 0:
            (directory.path / OWNER_LOCK).unlink(missing_ok=True)
            os.close(directory.lock)
            directory.lock = -1

    # -- writing

    @property
    def unread_rows(self) -> int:
        """Accepted rows the writer has not placed yet (ClickHouse or the retry queue)."""
        if len(self._directories) == 1:  # asked per request: no stopped logs is the usual case
            return self._own.unread
        return sum(d.unread for d in self._directories)

    def unread_by_hour(self) -> Counter[datetime]:
        """`unread_rows` by the UTC hour they were received: the ledger's pending rows that
        only the log holds. A segment whose rows are not in memory (another process's, or in
        the writer's hands) counts at the hour it was opened."""
        hours: Counter[datetime] = Counter()
        for directory in self._directories:
            for segment in directory.segments:
                if segment.name < directory.placed or not segment.rows:
                    continue
                rows = directory.cache.get(segment.name)
                if rows is not None and len(rows) == segment.rows:
                    hours.update(hour_of(row.received_at) for row in rows)
                else:
                    opened = datetime.fromtimestamp(int(segment.name) / 1e9, UTC)
                    hours[hour_of(opened)] += segment.rows
        return hours

    async def append(self, rows: list[TrackingRow]) -> None:
        """Returns once `rows` are durable; raises OSError (then nothing of them is read)."""
        done = asyncio.get_running_loop().create_future()
        self._queue(_Pending(self._own, _encode_lines(rows), done, rows=rows))
        await done

    async def commit(self, batch: Batch, placed: list[TrackingRow]) -> None:
        """Announce `placed` (the batch's rows that were stored or queued for retry) and move
        the writer's mark past the batch, in one durable write; raises OSError."""
        data = envelope_lines(placed) + commit_line(mark_past(batch.segment.name))
        done = asyncio.get_running_loop().create_future()
        self._queue(_Pending(batch.directory, data, done, batch=batch, messages=len(placed)))
        await done

    def _queue(self, pending: _Pending) -> None:
        self._pending.append(pending)
        if not self._scheduled:
            # Everything queued in this turn of the loop shares the write and the fsync.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_now)

    def _commit_now(self) -> None:
        self._scheduled = False
        group, self._pending = self._pending, []
        if not group:
            return
        own = self._own
        if all(pending.directory is own for pending in group):  # the usual case
            self._write(own, group)
            return
        by_directory: dict[int, list[_Pending]] = {}
        for pending in group:
            by_directory.setdefault(id(pending.directory), []).append(pending)
        for pendings in by_directory.values():
            self._write(pendings[0].directory, pendings)

    def _write(self, directory: Directory, group: list[_Pending]) -> None:
        data = b"".join(p.data for p in group)
        try:
            segment = directory.open_segment()
        except OSError as error:
            self._fail(group, error)
            return
        try:
            segment.reserve(len(data))
            write_all(segment.fd, data)
            if not self._helper.running:
                os.fsync(segment.fd)  # no helper: on the loop (about 0.2 ms here)
        except OSError as error:
            try:  # back to the last whole line: nothing of this group is ever read
                os.ftruncate(segment.fd, segment.size)
                segment.reserved = segment.size
            except OSError:
                segment.seal()  # its torn tail is stepped over: a newer segment follows
            self._fail(group, error)
            return
        segment.size += len(data)
        for pending in group:
            if pending.rows is not None:
                segment.rows += len(pending.rows)
            elif pending.messages:
                segment.messages += pending.messages
                segment.message_bytes += len(pending.data)
                directory.announced += pending.messages
        if segment.rows >= self._rows_per_segment:
            segment.seal()  # a batch's worth: the writer takes it whole
        if not self._helper.running:
            self._settle(group, segment)
            return
        segment.syncing += 1

        def synced(error: OSError | None) -> None:
            segment.syncing -= 1
            if error is None:
                self._settle(group, segment)
            else:
                segment.seal()  # what follows goes to a segment of its own
                self._fail(group, error)

        self._helper.sync(segment.path, synced)

    def _settle(self, group: list[_Pending], segment: Segment) -> None:
        directory = group[0].directory
        for pending in group:
            if pending.rows is not None:
                # Durable: it will be stored even if the client went away meanwhile (it got
                # no 202 and may send the events again: the eventId check drops the copy).
                directory.cache.setdefault(segment.name, []).extend(pending.rows)
                directory.unread += len(pending.rows)
            elif pending.batch is not None:
                self._placed(pending.batch)
            if not pending.done.done():
                pending.done.set_result(None)
        self._wake(segment)

    def _placed(self, batch: Batch) -> None:
        directory = batch.directory
        directory.placed = max(directory.placed, mark_past(batch.segment.name))
        directory.unread -= batch.segment.rows

    def _wake(self, segment: Segment) -> None:
        if segment.sealed and not segment.syncing and segment.rows:
            self.ready.set()

    def _fail(self, group: list[_Pending], error: OSError) -> None:
        for pending in group:
            if not pending.done.done():
                pending.done.set_exception(error)  # a request answers 503; the writer retries

    async def durable(self) -> None:
        """Wait until every group written so far is fsynced (or has failed)."""
        self._commit_now()
        await self._helper.idle()

    def seal(self) -> None:
        """Seal the open segment if it holds rows: the writer's timer takes what it has."""
        segments = self._own.segments
        if segments and not segments[-1].sealed and segments[-1].rows:
            segments[-1].seal()
            self._wake(segments[-1])

    # -- the writer's read

    def next_batch(self) -> Batch | None:
        """The oldest sealed, durable segment with rows past the writer's mark, or None."""
        for directory in self._directories:
            for segment in directory.segments:
                if segment.name < max(directory.placed, directory.taken):
                    continue
                if not segment.sealed or segment.syncing:
                    break  # the rest of this directory waits for it
                if not segment.rows:
                    if directory.taken <= directory.placed:  # nothing in the writer's hands
                        directory.placed = mark_past(segment.name)  # messages only
                    continue
                rows = directory.cache.pop(segment.name, None)
                if rows is None:
                    rows = read_rows(segment.path)
                directory.taken = mark_past(segment.name)
                return Batch(directory, segment, rows)
        return None

    def unread(self, batch: Batch) -> None:
        """A batch the writer did not place (shutdown came, or it failed): read it again."""
        directory = batch.directory
        if directory.taken == mark_past(batch.segment.name):
            directory.taken = directory.placed
        if directory.own:
            directory.cache.setdefault(batch.segment.name, batch.rows)
        self.ready.set()

    # -- both readers' marks: trimming, the backlog

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.maintain()

    def maintain(self) -> None:
        """Bound the relay's backlog, delete what both readers are past, copy the writer's
        marks for the relay, and let go of stopped processes' directories once they are done.
        Each step on its own: a full disk must not stop the trimming that frees it."""
        with self._step("directory check"):
            self._check_own()
        relay = read_relay_offset(self.directory)
        with self._step("backlog bound"):
            self._bound_backlog(relay)
        with self._step("trim"):
            self.trim({self.directory: (relay, self._own.floor)})
        for directory in list(self._directories):
            with self._step("writer mark"):
                if directory.placed != directory.mark_written:
                    write_mark(directory.path / WRITER_OFFSET, directory.placed)
                    directory.mark_written = directory.placed
            if directory.own or directory.unread or self._pending:
                continue
            # A stopped process's log whose rows are all placed: what is left is messages.
            for segment in directory.segments:
                segment.seal()
            if directory.segments:
                directory.placed = max(directory.placed, mark_past(directory.segments[-1].name))
            elif directory.mark_written == directory.placed:  # and the relay read them all
                self._let_go(directory)  # the relay removes the empty directory
                self._directories.remove(directory)

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            if str(error) != self._last_failure:  # once per kind of failure, not every pass
                log.error("tracking log: %s failed: %s", name, error)
            self._last_failure = str(error)
        else:
            self._last_failure = ""

    def trim(self, known: dict[Path, tuple[RelayOffset, str]] | None = None) -> int:
        """Delete sealed segments both readers are past; returns how many. `known`: relay
        offsets and floors already read, by directory."""
        relays = dict(known or {})
        removed = 0
        for directory in self._directories:
            for segment in list(directory.segments):
                if not segment.sealed or segment.syncing or segment.name >= directory.placed:
                    continue
                if directory.path not in relays:
                    relays[directory.path] = (
                        read_relay_offset(directory.path),
                        read_mark(directory.path / RELAY_FLOOR),
                    )
                relay, floor = relays[directory.path]
                if _relay_past(segment.path, relay, floor):
                    segment.path.unlink(missing_ok=True)
                    directory.segments.remove(segment)
                    removed += 1
        return removed

    def _bound_backlog(self, relay: RelayOffset) -> None:
        own = self._own
        if relay.published > self._published_seen:
            if self._count_published:
                PUBLISHED.labels(ROUTING_KEY).inc(relay.published - self._published_seen)
            self._published_seen = relay.published
        start = max(relay.segment, own.floor)
        ahead = [s for s in own.segments if s.name >= start and s.messages]
        waiting = sum(s.message_bytes for s in ahead)  # counts the relay's segment whole
        backlog = max(0, own.announced - relay.published - own.lost)
        if waiting > self._max_backlog_bytes:
            beyond = sum(s.messages for s in ahead if s.name > relay.segment)
            lost, floor = 0, own.floor
            while ahead and waiting > self._max_backlog_bytes:
                oldest = ahead.pop(0)
                if not oldest.sealed:
                    oldest.seal()  # nothing more is written where the relay is told to skip
                waiting -= oldest.message_bytes
                floor = mark_past(oldest.name)
                if oldest.name == relay.segment:  # the part it has not read yet
                    lost += max(0, backlog - beyond)
                else:
                    lost += oldest.messages
            write_mark(self.directory / RELAY_FLOOR, floor)
            own.floor = floor
            own.lost += lost
            backlog -= lost
            PUBLISH_LOST.labels(ROUTING_KEY).inc(lost)
            lose("publish_lost", lost)
            log.error(
                "event.tracked backlog over %d bytes: %d messages dropped",
                self._max_backlog_bytes,
                lost,
            )
        # Reported with this process's gauges (api/ops.py `refresh_gauges`).
        self.backlog = backlog

    def _check_own(self) -> None:
        """A log directory removed under the running process (an operator's `rm -r`, a volume
        gone): make it again and write back what the writer has not placed, from memory."""
        own = self._own
        if (own.path / OWNER_LOCK).exists():
            return
        log.error("tracking log: %s was removed; making it again", own.path)
        LOG_DAMAGE.labels("log", "directory_removed").inc()
        own.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if own.lock >= 0:
            os.close(own.lock)  # its file is gone with the directory
        own.lock = -1
        own.lock = lock_directory(own.path) or -1
        # The relay starts the new directory from scratch; what it had not published is gone.
        lost = self.backlog
        PUBLISH_LOST.labels(ROUTING_KEY).inc(lost)
        lose("publish_lost", lost)
        own.announced = own.lost = self._published_seen = self.backlog = 0
        own.floor = ""
        for segment in [s for s in own.segments if not s.path.exists()]:
            segment.seal()
            own.segments.remove(segment)
            rows = own.cache.pop(segment.name, None)
            if rows:  # not placed yet (a batch the writer holds is not cached: it goes on)
                own.unread -= len(rows)
                done = asyncio.get_running_loop().create_future()
                self._write(own, [_Pending(own, _encode_lines(rows), done, rows=rows)])
                done.add_done_callback(_log_failure)
                self.seal()


def _log_failure(done: asyncio.Future[None]) -> None:
    if done.exception() is not None:
        log.error("tracking log: rows could not be written back: %s", done.exception())


def _relay_past(path: Path, relay: RelayOffset, floor: str) -> bool:
    name = stem(path)
    if name < floor or name < relay.segment:
        return True
    if name == relay.segment:
        with contextlib.suppress(FileNotFoundError):
            return relay.offset >= path.stat().st_size
        return True
    return False


def open_log(
    directory: str,
    *,
    rows_per_segment: int,
    max_backlog_bytes: int,
    count_published: bool,
) -> TrackingLog:
    """This process's log (`<directory>/<random boot id>`, locked while the process lives),
    with every other log whose lock could be taken (its process is gone) to read first. A PID
    would not do as the name: after a container restart the service is PID 1 again, and a
    directory named after a live PID would never be taken over."""
    root = Path(directory).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    own_path = root / uuid.uuid4().hex
    own_lock = lock_directory(own_path)
    assert own_lock is not None  # a fresh random name: nobody else holds it
    adopted: list[Directory] = []
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p != own_path):
        lock = lock_directory(other)
        if lock is not None:  # held until it is done: nobody else takes it meanwhile
            adopted.append(take_over(other, lock))
    made = TrackingLog(
        Directory(own_path, own_lock, own=True),
        adopted,
        rows_per_segment=rows_per_segment,
        max_backlog_bytes=max_backlog_bytes,
        count_published=count_published,
    )
    if adopted:
        log.info(
            "tracking log: taking over %d stopped logs, %d events to place",
            len(adopted),
            made.unread_rows,
        )
    return made
