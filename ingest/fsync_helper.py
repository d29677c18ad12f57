"""The tracking log's fsync helper process (`ingest/fsyncer.py`), and the callbacks of the
groups waiting for its answers, in order (it answers in order)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from asyncio.subprocess import PIPE
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FSYNCER = Path(__file__).with_name("fsyncer.py")


class FsyncHelper:
    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[Callable[[OSError | None], None]] = deque()
        self._stopping = False

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-S", str(FSYNCER), stdin=PIPE, stdout=PIPE
        )
        self._reader = asyncio.create_task(self._read(self._process), name="log-fsync")

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
        if not self._stopping:
            log.warning("tracking log: the fsync helper exited; fsyncing on the event loop")
        while self._waiting:
            self._waiting.popleft()(OSError("the tracking log's fsync helper exited"))

    async def idle(self) -> None:
        while self._waiting and self.running:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        await self.idle()
        self._stopping = True
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self._process.wait(), 5)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
