"""The `event.tracked` relay: publishes the stored events' messages from the tracking logs
(`ingest/log_files.py`) on RabbitMQ.

It reads files only (no ClickHouse, no Redis), so it runs anywhere the spool directory is: a
child process of `analytics serve` (chDB's one-process rule does not touch it), or
`analytics relay` beside the API containers, as many as wanted. Each log directory is relayed
by one relay at a time (an flock on `.relay.lock`); several relays share the directories, none
sends a message twice on its own account.

Per pass over a directory: read the complete lines after `.relay-offset` (or from
`.relay-floor` when the log's owner has moved it past the backlog's bound), publish the
message lines among them with publisher confirms (`ingest/amqp_frames.py`: a chunk written at
once, confirms collected together), then commit the new offset. A segment is deleted once
the relay and the ClickHouse writer (`.writer-offset`) are both past it: by the log's owner,
or by the relay when it is the one to get there last (so a log whose process is gone for good
is cleared too). A message is sent again only when the relay dies or the broker fails between
the send and the offset write (at least once; the message id is the eventId, so consumers drop
the copy).
A directory whose process has gone (no `.lock`) and which holds no segment is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.metrics import PUBLISH_FAILURES, PUBLISHED, RESTARTS
from core.settings import Settings
from core.tracked import ROUTING_KEY
from ingest.amqp_frames import ConfirmingPublisher, PublishError
from ingest.log_files import (
    OWNER_LOCK,
    RELAY_FLOOR,
    RELAY_OFFSET,
    WRITER_OFFSET,
    RelayOffset,
    is_legacy_outbox,
    is_segment,
    messages,
    read_mark,
    read_relay_offset,
    stem,
    write_relay_offset,
)

log = logging.getLogger(__name__)

RELAY_LOCK = ".relay.lock"
READ_BYTES = 4 * 1024 * 1024
CHUNK = 5000  # messages in flight at once


@dataclass
class _Claim:
    directory: Path
    fd: int
    offset: RelayOffset


class Relay:
    def __init__(
        self,
        root: Path,
        amqp_url: str,
        exchange: str,
        *,
        poll_s: float = 0.05,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._root = root
        self._url = amqp_url
        self._exchange = exchange
        self._poll = poll_s
        self._alive = alive  # a child relay stops when its parent is gone
        self._claims: dict[Path, _Claim] = {}
        self.published = 0
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set (or `alive()` turns false); reconnects on any failure."""
        backoff = 0.5
        while not stop.is_set() and self._alive():
            publisher = None
            try:
                publisher = await ConfirmingPublisher.connect(
                    self._url, self._exchange, ROUTING_KEY
                )
                self.connected.set()
                backoff = 0.5
                while not stop.is_set() and self._alive():
                    sent = await self.relay_once(publisher)
                    if not sent:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self._poll)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker or the connection failed: again, counted
                self.connected.clear()
                RESTARTS.labels("relay").inc()
                log.warning("relay: %s; reconnecting in %.1fs", error, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                if publisher is not None:
                    await publisher.close()
        self.release()

    def release(self) -> None:
        for claim in self._claims.values():
            os.close(claim.fd)
        self._claims.clear()

    async def relay_once(self, publisher: ConfirmingPublisher) -> int:
        """One pass over every directory this relay holds (claiming new ones); messages sent."""
        self._claim_new()
        sent = 0
        for claim in list(self._claims.values()):
            sent += await self._drain(claim, publisher)
        return sent

    def _claim_new(self) -> None:
        if not self._root.is_dir():
            return
        for directory in self._root.iterdir():
            if not directory.is_dir() or directory in self._claims:
                continue
            try:
                fd = os.open(directory / RELAY_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue  # removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # another relay has it
                continue
            self._claims[directory] = _Claim(directory, fd, read_relay_offset(directory))

    def _segments(self, directory: Path, after: str) -> list[Path]:
        found: dict[str, Path] = {}
        for path in directory.iterdir():
            if is_segment(path) or is_legacy_outbox(path):
                name = stem(path)
                if name >= after:
                    # A legacy outbox segment sealed between two listings shows once.
                    found[name] = path
        return [found[name] for name in sorted(found)]

    async def _drain(self, claim: _Claim, publisher: ConfirmingPublisher) -> int:
        directory = claim.directory
        floor = read_mark(directory / RELAY_FLOOR)
        if floor > claim.offset.segment:  # its owner dropped what lies before (counted there)
            claim.offset = RelayOffset(floor, 0, claim.offset.published)
            write_relay_offset(directory, claim.offset)
        try:
            segments = self._segments(directory, claim.offset.segment)
        except FileNotFoundError:
            self._forget(claim)
            return 0
        if not segments:
            self._remove_if_finished(claim)
            return 0
        sent = 0
        # Read once a pass: the writer's mark only moves forward, so a stale one is safe.
        writer_done = read_mark(directory / WRITER_OFFSET)
        for path in segments:
            name = stem(path)
            start = claim.offset.offset if name == claim.offset.segment else 0
            try:
                with path.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read(READ_BYTES)
                    size = os.fstat(handle.fileno()).st_size
            except FileNotFoundError:
                return sent  # deleted or sealed (a legacy rename) meanwhile: next pass
            complete = data[: data.rfind(b"\n") + 1]
            found = messages(complete)
            if found:
                await self._publish(publisher, found)
                sent += len(found)
                self.published += len(found)
                PUBLISHED.labels(ROUTING_KEY).inc(len(found))
            position = start + len(complete)
            if name != claim.offset.segment or position != claim.offset.offset:
                claim.offset = RelayOffset(name, position, claim.offset.published + len(found))
                write_relay_offset(directory, claim.offset)
            read = position >= size
            if read and (is_legacy_outbox(path) or name < writer_done):
                # Read to its end, and the writer is done with it (the mark passes a segment
                # only once it is sealed): both consumers are past it, whoever deletes it. So
                # the log of a process that is gone and will not be taken over is cleared too.
                # (An old outbox segment is the relay's alone; its writers are gone since the
                # upgrade.)
                path.unlink(missing_ok=True)
            if not read or path == segments[-1]:
                return sent  # not read to its end, or the newest segment: it may still grow
            # Read to its end with a newer segment beside it: complete, on to the next one.
        return sent

    async def _publish(
        self, publisher: ConfirmingPublisher, found: list[tuple[bytes, bytes]]
    ) -> None:
        """Every message confirmed by the broker, or an exception (nothing is recorded as
        sent then; the next connection sends the chunk again)."""
        for at in range(0, len(found), CHUNK):
            chunk = found[at : at + CHUNK]
            try:
                await publisher.publish(chunk)
            except PublishError:
                PUBLISH_FAILURES.labels(ROUTING_KEY).inc(len(chunk))
                raise

    def _remove_if_finished(self, claim: _Claim) -> None:
        """A directory whose process is gone and which holds no segment is removed."""
        directory = claim.directory
        names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
        if OWNER_LOCK in names:
            return
        if any(is_segment(Path(n)) or is_legacy_outbox(Path(n)) for n in names):
            return
        for leftover in (RELAY_OFFSET, WRITER_OFFSET, RELAY_FLOOR, RELAY_LOCK):
            (directory / leftover).unlink(missing_ok=True)
            (directory / f"{leftover}.tmp").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()
        self._forget(claim)

    def _forget(self, claim: _Claim) -> None:
        os.close(claim.fd)
        self._claims.pop(claim.directory, None)


class RelayMode(enum.StrEnum):
    TASK = "task"  # in this process's event loop (the tests' in-process servers)
    PROCESS = "process"  # a child process (`analytics serve`): a core of its own
    NONE = "none"  # run apart, as `analytics relay` (`analytics api`)


class RelayHandle:
    """A relay this process started, as a task or a child process, and stops at shutdown. A
    child that dies is started again (counted in `component_restarts_total{component="relay"}`)."""

    def __init__(self, settings: Settings, mode: RelayMode) -> None:
        self._stopping = False
        self._child: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self.relay: Relay | None = None
        if mode is RelayMode.PROCESS:
            self._task = asyncio.create_task(self._supervise(), name="relay-child")
        else:
            root = Path(settings.spool_dir).resolve()
            self.relay = Relay(root, settings.amqp_url, settings.amqp_exchange)
            self._task = asyncio.create_task(self.relay.run(self._stop), name="relay")

    @classmethod
    def start(cls, settings: Settings, mode: RelayMode) -> RelayHandle | None:
        if mode is RelayMode.NONE or not settings.spool_dir:
            return None
        return cls(settings, mode)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "relay", "--parent", str(os.getpid())
            )
            await self._child.wait()
            if self._stopping:
                return
            RESTARTS.labels("relay").inc()
            log.error(
                "relay child exited with %s; starting it again in %.0fs",
                self._child.returncode,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()
        if self.relay is None:
            self._task.cancel()  # it may be waiting out a restart's backoff
        await asyncio.gather(self._task, return_exceptions=True)
