"""The local spool: an accepted event is on disk before its 202.

Requests hand their rows to `append`, which returns once they are written and fsynced and
handed to the batch writer. Every request that arrives in one turn of the event loop shares one
write (on the loop: it only copies into the page cache) and one fsync, made by a helper process
(`ingest/fsyncer.py`) so that the loop never waits on the disk: a group's answers are released
together when the helper's answer arrives, one wake-up per group. (A thread would need the GIL
back after each fsync, and under load waits for it: measured slower than fsyncing on the loop.)
Rows are handed to the writer (and numbered) when their group is durable, in the order they
were written, whether or not the request is still there to answer. Segments rotate every
`segment_seconds`; a sealed segment is deleted once the batch writer reports every row in it
stored (its `event.tracked` messages then in the outbox) or handed to the Redis retry queue
(`BatchWriter.done_through`). At start-up, the segments a previous process left (killed, say)
are taken over (`Spool.replay`): their rows go through the writer like live traffic, sessions
included, skipping events whose eventId is already stored, so replay never duplicates a row;
the stored ones' messages are published again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from core.clickhouse import Warehouse
from core.rows import TrackingRow
from ingest.outbox import Outbox, seal_leftovers
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
    max_seq: int = 0
    syncing: int = 0  # groups written here whose fsync has not been confirmed yet
    sealed: bool = False

    def seal(self) -> None:
        self.sealed = True
        os.close(self.fd)


@dataclass
class _Pending:
    data: bytes
    rows: list[TrackingRow]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


FSYNCER = Path(__file__).with_name("fsyncer.py")


class _Syncer:
    """The fsync helper process, and the callbacks of the groups waiting for its answers (in
    order: it answers in order)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[Callable[[OSError | None], None]] = deque()

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-S", str(FSYNCER), stdin=PIPE, stdout=PIPE
        )
        self._reader = asyncio.create_task(self._read(self._process), name="spool-fsync")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def sync(self, path: Path, done: Callable[[OSError | None], None]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._waiting.append(done)
        self._process.stdin.write(bytes(path) + b"\n")

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            answer = await process.stdout.readline()
            if not answer:
                break
            done = self._waiting.popleft()
            done(None if answer == b"\n" else OSError(answer[1:].decode(errors="replace")))
        # The helper is gone: nothing waiting was confirmed durable; the loop fsyncs from now.
        log.warning("spool: the fsync helper exited; fsyncing on the event loop")
        while self._waiting:
            self._waiting.popleft()(OSError("the spool's fsync helper exited"))

    async def idle(self) -> None:
        while self._waiting and self.running:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        await self.idle()
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self._process.wait(), 5)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class Spool:
    def __init__(
        self,
        directory: Path,
        writer: BatchWriter[TrackingRow],
        segment_seconds: float = 1.0,
        locks: list[int] | None = None,
        adopted: set[Path] | None = None,
    ) -> None:
        self.directory = directory
        self._locks = locks or []  # flocks on this spool and on the stopped ones it replays
        self._adopted = adopted or set()  # the stopped processes' directories
        self._writer = writer
        self._segment_seconds = segment_seconds
        self._pending: list[_Pending] = []
        self._segments: list[_Segment] = []
        self._task: asyncio.Task[None] | None = None
        self._scheduled = False
        self._syncer = _Syncer()

    async def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            await self._syncer.start()
        except OSError as error:  # then the loop fsyncs itself
            log.warning("spool: no fsync helper (%s); fsyncing on the event loop", error)
        self._task = asyncio.create_task(self._commit_loop(), name="spool")

    async def close(self) -> None:
        """Commit what is waiting; segments stay until the writer has stored their rows."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._commit_now()
        await self._syncer.stop()
        for segment in self._segments:
            if not segment.sealed:
                segment.seal()

    def release(self) -> None:
        """Let go of the spool directories' locks: the last step of shutdown, after `trim`."""
        for directory in {self.directory} | self._adopted:
            if not any(directory.glob("*.jsonl")):
                (directory / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    directory.rmdir()
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    async def replay(
        self,
        warehouse: Warehouse,
        segments: list[Path],
        outbox: Outbox | None,
        replaying: Callable[[list[TrackingRow]], None],
    ) -> None:
        """Take over a stopped process's segments: their rows that ClickHouse does not have go
        to the batch writer like live traffic (ahead of it: nothing new is added before this
        returns), through the session step (`replaying` tells it they are no duplicates even if
        the stopped process got as far as marking them seen); each segment is then deleted as
        this spool's own are, once the writer has stored or handed off its rows. Rows ClickHouse
        has were stored, but whether their `event.tracked` went out is unknown: they are
        announced once more (at least once; consumers drop the re-send by eventId)."""
        again = taken = 0
        for path in segments:
            rows: dict[uuid.UUID, TrackingRow] = {}
            for line in path.read_bytes().splitlines():
                try:
                    row = _decode_row(line)
                except msgspec.DecodeError:
                    log.warning("%s: skipping a torn last line (killed mid-write)", path.name)
                    continue
                rows.setdefault(row.event_id, row)  # a beacon sent twice is one event
            stored = await stored_event_ids(warehouse, list(rows.values())) if rows else set()
            missing = [row for event_id, row in rows.items() if event_id not in stored]
            if outbox is not None and stored:
                outbox.append([row for event_id, row in rows.items() if event_id in stored])
            again += len(rows) - len(missing)
            if not missing:
                path.unlink()
                continue
            replaying(missing)
            segment = _Segment(path, -1, time.monotonic(), sealed=True)
            segment.max_seq = self._writer.add(missing)
            self._segments.append(segment)
            taken += len(missing)
        if segments:
            log.info(
                "spool: %d segments of stopped processes: %d events to store, %d announced again",
                len(segments),
                taken,
                again,
            )

    def trim(self) -> int:
        """Delete sealed segments whose rows are all done; returns how many."""
        done = self._writer.done_through
        removed = 0
        for segment in list(self._segments):
            if segment.sealed and segment.syncing == 0 and segment.max_seq <= done:
                segment.path.unlink(missing_ok=True)
                self._segments.remove(segment)
                removed += 1
        return removed

    async def append(self, rows: list[TrackingRow]) -> None:
        """Returns once `rows` are on disk and in the batch writer's hands."""
        pending = _Pending(_encode_lines(rows), rows)
        self._pending.append(pending)
        if not self._scheduled:
            # Every request that arrives in this turn of the loop shares the write and fsync.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_now)
        await pending.done

    async def _commit_loop(self) -> None:
        """Rotation and trimming; the commits themselves run inline (`_commit_now`)."""
        while True:
            await asyncio.sleep(self._segment_seconds / 2)
            try:
                self._seal_if_old()
                self.trim()
            except OSError:
                log.exception("spool maintenance failed")

    def _seal_if_old(self) -> None:
        if self._segments and not self._segments[-1].sealed:
            current = self._segments[-1]
            if time.monotonic() - current.opened >= self._segment_seconds:
                current.seal()

    def _current(self) -> _Segment:
        now = time.monotonic()
        if self._segments and not self._segments[-1].sealed:
            current = self._segments[-1]
            if now - current.opened < self._segment_seconds:
                return current
            current.seal()
        path = self.directory / f"{time.time_ns():020d}.jsonl"
        # Owner-only: accepted events hold what visitors did on the site.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = _Segment(path, fd, now)
        self._segments.append(segment)
        return segment

    def _commit_now(self) -> None:
        """Write the waiting appends and have them fsynced; `_settle` answers them."""
        self._scheduled = False
        group, self._pending = self._pending, []
        if not group:
            return
        try:
            segment = self._current()
            _write_all(segment.fd, b"".join(p.data for p in group))
            if not self._syncer.running:
                os.fsync(segment.fd)  # no helper: on the loop (about 0.2 ms here)
        except OSError as error:
            _fail(group, error)
            return
        if not self._syncer.running:
            self._settle(group, segment)
            return
        segment.syncing += 1

        def synced(error: OSError | None) -> None:
            segment.syncing -= 1
            if error is None:
                self._settle(group, segment)
            else:
                _fail(group, error)

        self._syncer.sync(segment.path, synced)

    def _settle(self, group: list[_Pending], segment: _Segment) -> None:
        for pending in group:
            # Durable, so stored even if the client went away meanwhile (it got no 202 and
            # may send the events again: the eventId check drops the copy).
            segment.max_seq = self._writer.add(pending.rows)
            if not pending.done.done():
                pending.done.set_result(None)


def _fail(group: list[_Pending], error: OSError) -> None:
    for pending in group:
        if not pending.done.done():
            pending.done.set_exception(error)


LOCK_NAME = ".lock"


def _lock(directory: Path) -> int | None:
    """An exclusive flock on `directory`'s lock file, or None when a live process holds it.
    The kernel drops the lock when its holder dies, however it dies."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def open_spool(directory: str, writer: BatchWriter[TrackingRow]) -> tuple[Spool, list[Path]]:
    """This process's spool (`<directory>/<random boot id>`, locked while the process lives),
    and the segments of every other spool whose lock could be taken (its process is gone),
    to replay first. A PID would not do as the name: after a container restart the service
    is PID 1 again, and a directory named after a live PID would never be replayed."""
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
            continue  # a live process's spool
        locks.append(lock)  # held until this process ends: nobody else replays it meanwhile
        adopted.add(other)
        seal_leftovers(other)  # its outbox's last segment: the relay may now finish it
        leftovers.extend(sorted(other.glob("*.jsonl")))
    return Spool(own, writer, locks=locks, adopted=adopted), leftovers
