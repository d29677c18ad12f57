"""The tracking log on disk: what `ingest/tracking_log.py` writes and its two readers read.

A log is a directory `<TRACKING_LOG_DIR>/<boot id>/` of segments `<ns>.jsonl`. A segment is a
sequence of lines of three kinds, told apart by their first byte:
- `[` an accepted event (a `TrackingRow`, array-like), appended before its 202: what the
  ClickHouse writer reads;
- `{` the `event.tracked` message of an event the writer has placed (its envelope, which
  starts with `{"eventId":"<id>"`): what the relay reads;
- `#` the writer's commit `#<mark>`, written in the same group write as the messages of the
  batch it commits: every accepted event in the segments whose stem sorts before the mark is
  in ClickHouse or in the retry queue, and announced. A batch is one segment's events (a
  segment is sealed when it holds a batch's worth, or when the writer's timer comes), so a
  batch read again after a crash is the same batch, with the same insert token.

Only the newest segment of a directory is ever written to, so a segment with a newer one
beside it is complete: bytes after its last newline are a torn tail (a write cut short by a
full disk or a crash), which every reader steps over and counts.

Marks beside the segments, each a file of two fixed-size slots overwritten in place, in turn,
each slot with a sequence number and a checksum: a reader takes the newest whole one. Being
written in place, a mark needs no new space once it exists, so both readers keep committing
(and the log keeps trimming) on a full disk; a write cut by a crash leaves the other slot.
- `.writer-offset`: the writer's mark as of its last commit, a copy of the commit lines kept
  for the relay (which deletes what both readers are past) and for a quick start;
- `.relay-offset`: the relay's segment, bytes of it read, and messages confirmed all time;
- `.relay-floor`: written by the owner when the relay's backlog passes its bound: the relay
  skips every segment before it (those messages are counted lost).
A segment is deleted once both readers are past it.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import msgspec

SEGMENT = ".jsonl"
OWNER_LOCK = ".lock"  # held (flock) by the process whose log this is
RELAY_LOCK = ".relay.lock"
WRITER_OFFSET = ".writer-offset"
RELAY_OFFSET = ".relay-offset"
RELAY_FLOOR = ".relay-floor"

ROW_START = b"["
COMMIT_START = b"#"
ID_PREFIX = b'{"eventId":"'  # msgspec writes the envelope's fields in order: the id comes first
ID_END = len(ID_PREFIX) + 36


def stem(path: Path) -> str:
    return path.name.split(".", 1)[0]


def is_segment(path: Path) -> bool:
    return path.name.endswith(SEGMENT)


def segments(directory: Path) -> list[Path]:
    """The directory's segments, oldest first."""
    return sorted(p for p in directory.iterdir() if is_segment(p))


def complete(data: bytes) -> bytes:
    """The whole lines of `data`."""
    return data[: data.rfind(b"\n") + 1]


def messages(lines: bytes) -> list[tuple[bytes, bytes]]:
    """The (message id, body) of every `event.tracked` line among complete `lines`."""
    return [
        (line[len(ID_PREFIX) : ID_END], line)
        for line in lines.split(b"\n")
        if line.startswith(ID_PREFIX)
    ]


def commit_line(mark: str) -> bytes:
    return b"#" + mark.encode() + b"\n"


def last_commit(lines: bytes) -> str:
    """The mark of the last writer commit among complete `lines` ("" when none)."""
    at = lines.rfind(b"\n#") + 1
    if at == 0 and not lines.startswith(COMMIT_START):
        return ""
    return lines[at + 1 : lines.find(b"\n", at)].decode()


def mark_past(name: str) -> str:
    """The mark that says every segment up to and including `name` is done."""
    return name + "~"


class RelayOffset(msgspec.Struct, frozen=True):
    """How far the relay has read one log directory (written by the relay)."""

    segment: str = ""  # the segment's stem; every segment before it is read
    offset: int = 0  # bytes of it read
    published: int = 0  # messages this directory's relay has had confirmed, all time


_relay_offset = msgspec.json.Decoder(RelayOffset)
_SLOT = 128  # bytes per slot: `<seq> <value>`, padded, then `<crc32 hex>\n`


def read_relay_offset(directory: Path) -> RelayOffset:
    value = _read_slots(directory / RELAY_OFFSET)
    if value is None:
        return RelayOffset()
    try:
        return _relay_offset.decode(value)
    except msgspec.DecodeError:
        return RelayOffset()


def write_relay_offset(directory: Path, offset: RelayOffset) -> None:
    _write_slots(directory / RELAY_OFFSET, msgspec.json.encode(offset))


def read_mark(path: Path) -> str:
    """A mark kept in a file (`.writer-offset`, `.relay-floor`), or "" when none."""
    value = _read_slots(path)
    return "" if value is None else value.decode()


def write_mark(path: Path, name: str) -> None:
    _write_slots(path, name.encode())


def _slots(data: bytes) -> list[tuple[int, bytes]]:
    found = []
    for at in (0, _SLOT):
        slot = data[at : at + _SLOT]
        if len(slot) < _SLOT:
            continue
        body, crc = slot[:-9], slot[-9:-1]
        if f"{zlib.crc32(body):08x}".encode() != crc:
            continue  # never written, or cut by a crash
        seq, _, value = body.rstrip(b" ").partition(b" ")
        found.append((int(seq), value))
    return found


def _read_slots(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    found = _slots(data)
    return max(found)[1] if found else None


def _write_slots(path: Path, value: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        found = _slots(os.pread(fd, 2 * _SLOT, 0))
        seq = max(found)[0] + 1 if found else 1
        body = b"%d %s" % (seq, value)
        if len(body) > _SLOT - 9:
            raise ValueError(f"a mark of {len(body)} bytes does not fit its slot")
        body = body.ljust(_SLOT - 9)
        os.pwrite(fd, body + f"{zlib.crc32(body):08x}\n".encode(), (seq % 2) * _SLOT)
    finally:
        os.close(fd)
