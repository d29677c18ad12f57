"""The `event.tracked` relay: publishes the stored events' messages from the tracking logs
(`ingest/log_files.py`) on RabbitMQ.

It reads files only (no ClickHouse, no Redis), so it runs anywhere the tracking log is: a
child process of `analytics serve` (chDB's one-process rule does not touch it), or `analytics
relay` beside the API containers, as many as wanted; both are assembled in `cli/assembly.py`.
Each log directory is relayed by one relay at a time (an flock on `.relay.lock`); several
relays share the directories, none sends a message twice on its own account.

Per pass over a directory: read the complete lines after `.relay-offset` (or from
`.relay-floor` when the log's owner has moved it past the backlog's bound), publish the
message lines among them with publisher confirms (`ingest/amqp_frames.py`: a chunk written at
once, confirms collected together), then commit the new offset. A segment is deleted once
the relay and the ClickHouse writer (`.writer-offset`) are both past it: by the log's owner,
or by the relay when it is the one to get there last (so a log whose process is gone for good
is cleared too). A segment with a newer one beside it is complete: bytes after its last newline
are a torn tail (a write cut short), stepped over and counted; a segment deleted under the relay
is passed by. A message is sent again only when the relay dies or the broker fails between
the send and the offset write (at least once; the message id is the eventId, so consumers drop
the copy).
A directory whose process has gone (no `.lock`) and which holds no segment is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.metrics import LOG_DAMAGE, PUBLISH_FAILURES, PUBLISHED
from core.supervisor import Backoff, supervise
from ingest.amqp_frames import ConfirmingPublisher, PublishError
from ingest.announce_lags import AnnounceLags
from ingest.log_files import (
    OWNER_LOCK,
    RELAY_FLOOR,
    RELAY_LOCK,
    RELAY_OFFSET,
    WRITER_OFFSET,
    RelayOffset,
    is_segment,
    messages,
    read_mark,
    read_relay_offset,
    stem,
    write_relay_offset,
)
from ingest.log_files import segments as log_segments
from tracked.message import ROUTING_KEY

log = logging.getLogger(__name__)

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
        self._lags = AnnounceLags(root)
        self.published = 0
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set (or `alive()` turns false); the broker or the connection
        failing is counted and the relay connects again (the supervisor)."""

        async def disconnected(error: Exception) -> None:
            self.connected.clear()

        async def relay(backoff: Backoff) -> None:
            if not self._alive():
                return
            publisher = await ConfirmingPublisher.connect(self._url, self._exchange, ROUTING_KEY)
            try:
                self.connected.set()
                backoff.reset()
                while not stop.is_set() and self._alive():
                    if not await self.relay_once(publisher):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self._poll)
            finally:
                await publisher.close()

        try:
            await supervise(
                "relay", relay, backoff=Backoff(0.5, 10.0), stop=stop, on_failure=disconnected
            )
        finally:
            self.release()

    def release(self) -> None:
        self._lags.flush()
        for claim in self._claims.values():
            os.close(claim.fd)
        self._claims.clear()

    async def relay_once(self, publisher: ConfirmingPublisher) -> int:
        """One pass over every directory this relay holds (claiming new ones); messages sent."""
        self._lags.tick()
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

    async def _drain(self, claim: _Claim, publisher: ConfirmingPublisher) -> int:
        directory = claim.directory
        floor = read_mark(directory / RELAY_FLOOR)
        if floor > claim.offset.segment:  # its owner dropped what lies before (counted there)
            claim.offset = RelayOffset(floor, 0, claim.offset.published)
            write_relay_offset(directory, claim.offset)
        try:
            segments = [p for p in log_segments(directory) if stem(p) >= claim.offset.segment]
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
                continue  # deleted under the relay (its owner trimmed it, or an operator)
            complete = data[: data.rfind(b"\n") + 1]
            found = messages(complete)
            if found:
                await self._publish(publisher, found)
                sent += len(found)
                self.published += len(found)
                PUBLISHED.labels(ROUTING_KEY).inc(len(found))
            position = start + len(complete)
            newest = path == segments[-1]
            if not newest and start + len(data) == size and position < size:
                # A newer segment exists, so this one is complete: what follows its last
                # newline is a torn tail (a write cut short), never a line to wait for.
                LOG_DAMAGE.labels("relay", "torn_tail").inc()
                log.warning("relay: %s: stepping over a torn tail", path)
                position = size
            if name != claim.offset.segment or position != claim.offset.offset:
                claim.offset = RelayOffset(name, position, claim.offset.published + len(found))
                write_relay_offset(directory, claim.offset)
            read = position >= size
            if read and name < writer_done:
                # Read to its end, and the writer is done with it (its mark passes a segment
                # only once it is sealed): both readers are past it, whoever deletes it. So
                # the log of a process that is gone and will not be taken over is cleared too.
                path.unlink(missing_ok=True)
            if not read or newest:
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
            self._lags.confirmed([body for _, body in chunk])

    def _remove_if_finished(self, claim: _Claim) -> None:
        """A directory whose process is gone and which holds no segment is removed."""
        directory = claim.directory
        names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
        if OWNER_LOCK in names:
            return
        if any(is_segment(Path(n)) for n in names):
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
