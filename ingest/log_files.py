"""The tracking log on disk: what `ingest/tracking_log.py` writes and `ingest/relay.py` reads.

A process's log is a directory `<SPOOL_DIR>/<boot id>/` of segments `<ns>.jsonl`, each a
sequence of JSON lines of two kinds, told apart by their first byte:
- `[` an accepted event (a `TrackingRow`, array-like), appended before its 202: the ClickHouse
  writer's input;
- `{` the `event.tracked` message of a stored event (its envelope, which starts with
  `{"eventId":"<id>"`), appended once the writer has stored it: the relay's input.

Each consumer commits how far it got, in a file of the directory:
- `.writer-offset`: the first segment holding an accepted event not yet stored or handed to
  the retry queue (written by the log's owner; a restart replays from there);
- `.relay-offset`: the relay's segment, bytes of it read, and messages confirmed all time;
- `.relay-floor`: written by the owner when the relay's backlog passes its bound: the relay
  skips every segment before it (those messages are counted lost).
A segment is deleted once both consumers have committed past it. Only the newest segment of a
directory is written to, so a segment with a newer one beside it is complete.

Before 2026-11-28 stored events' messages went to separate outbox segments (`<ns>.tracked`,
`<ns>.tracked.open`, lines `<eventId> <envelope>` before that): the relay still reads those and
deletes them once read.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

SEGMENT = ".jsonl"
LEGACY_OUTBOX = (".tracked", ".tracked.open")
OWNER_LOCK = ".lock"  # held (flock) by the process whose log this is
WRITER_OFFSET = ".writer-offset"
RELAY_OFFSET = ".relay-offset"
RELAY_FLOOR = ".relay-floor"

ID_PREFIX = b'{"eventId":"'  # msgspec writes the envelope's fields in order: the id comes first
ID_END = len(ID_PREFIX) + 36
ROW_START = b"["


def stem(path: Path) -> str:
    return path.name.split(".", 1)[0]


def is_segment(path: Path) -> bool:
    return path.name.endswith(SEGMENT)


def is_legacy_outbox(path: Path) -> bool:
    return path.name.endswith(LEGACY_OUTBOX)


def messages(lines: bytes) -> list[tuple[bytes, bytes]]:
    """The (message id, body) of every `event.tracked` line among complete `lines`."""
    found = []
    for line in lines.split(b"\n"):
        if not line or line.startswith(ROW_START):
            continue
        if line.startswith(ID_PREFIX):
            found.append((line[len(ID_PREFIX) : ID_END], line))
        else:  # an outbox line written before 2026-11-28: `<eventId> <envelope>`
            message_id, _, body = line.partition(b" ")
            found.append((message_id, body))
    return found


class RelayOffset(msgspec.Struct, frozen=True):
    """How far the relay has read one log directory (written by the relay)."""

    segment: str = ""  # the segment's stem; every segment before it is read
    offset: int = 0  # bytes of it read
    published: int = 0  # messages this directory's relay has had confirmed, all time


_relay_offset = msgspec.json.Decoder(RelayOffset)


def read_relay_offset(directory: Path) -> RelayOffset:
    try:
        return _relay_offset.decode((directory / RELAY_OFFSET).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return RelayOffset()


def write_relay_offset(directory: Path, offset: RelayOffset) -> None:
    _replace(directory / RELAY_OFFSET, msgspec.json.encode(offset))


def read_mark(path: Path) -> str:
    """A segment stem kept in a file (`.writer-offset`, `.relay-floor`), or "" when none."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def write_mark(path: Path, name: str) -> None:
    _replace(path, name.encode())


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def cut_torn_line(path: Path) -> None:
    """Drop the partial last line a killed writer left (its event was never answered)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
