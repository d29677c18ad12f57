"""The tracking log's fsync helper: a small child process that makes log segments durable, so the
ingest loop never waits on the disk and no thread of the service needs its GIL back.

Protocol, one line each way: the service writes a segment's path (`path\\n`) after appending a
group of rows to it with `write(2)`; the helper fsyncs that file and answers `\\n`. fsync makes
every byte written to the file durable, through whichever descriptor, so the helper's own
descriptor serves. Requests are answered in order; several may be in flight.

Started by the log as `python -S ingest/fsyncer.py` (by path: it imports nothing of ours).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    requests = sys.stdin.buffer
    answers = sys.stdout.buffer
    path, fd = b"", -1
    for line in requests:
        wanted = line.rstrip(b"\n")
        try:
            if wanted != path:
                opened = os.open(wanted, os.O_RDONLY)
                if fd >= 0:
                    os.close(fd)
                path, fd = wanted, opened
            os.fsync(fd)
            answers.write(b"\n")
        except OSError as error:
            path, fd = b"", -1
            answers.write(b"!" + str(error).encode(errors="replace").replace(b"\n", b" ") + b"\n")
        answers.flush()


if __name__ == "__main__":
    main()
