"""The tracking event contract (the platform's tracking schema), decoded straight from bytes."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from core.metrics import LONE_SURROGATES

MAX_EVENTS_PER_REQUEST = 100
MAX_PROPERTIES_BYTES = 8 * 1024
MAX_PROPERTIES_DEPTH = 5  # {"a": {"b": [1]}} is depth 3
TOO_DEEP = "JSON nested too deeply"


# A Literal decodes to a plain str (an Enum member costs a slow property lookup per use).
EventType = Literal[
    "PAGEVIEW",
    "CLICK",
    "FILTER_APPLY",
    "PRODUCT_VIEW",
    "ADD_TO_WISHLIST",
    "BOOKING_START",
    "BOOKING_COMPLETE",
    "BROCHURE_REQUEST",
    "CONTACT_SUBMIT",
]


Url = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
OptionalText = Annotated[str, msgspec.Meta(max_length=4096)] | None
# Clients differ in case ("mobile", "MOBILE"); the stored value is lower case.
# Any short string, as the platform's tracking schema types it: mobile, tablet and desktop (any
# case) are normalised to lower case, anything else (smarttv, console...) is stored as given.
DeviceType = Annotated[str, msgspec.Meta(max_length=32)]


# gc=False on the decoded structs: scalars and nested structs only, no cycles possible.
class Metadata(msgspec.Struct, rename="camel", frozen=True, gc=False):
    url: Url
    referrer: OptionalText = None
    user_agent: OptionalText = None
    device_type: DeviceType | None = None


class TrackingEvent(msgspec.Struct, rename="camel", frozen=True, gc=False):
    event_type: EventType
    session_id: uuid.UUID
    metadata: Metadata
    user_id: uuid.UUID | None = None
    # Kept as the client's exact bytes so nothing about the object is lost in storage.
    properties: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    event_id: uuid.UUID | None = None
    timestamp: datetime | None = None


class Rejection(msgspec.Struct, frozen=True):
    index: int
    error: str
    path: str


class Decoded(msgspec.Struct, frozen=True):
    """A request body taken apart: the events that passed, by index, and those that did not."""

    is_array: bool
    events: list[tuple[int, TrackingEvent]]
    rejected: list[Rejection]


class BodyError(Exception):
    """The body as a whole is unusable (not JSON, wrong shape, too many events)."""

    def __init__(self, message: str, status: int = 400, path: str = "$") -> None:
        super().__init__(message)
        self.status = status
        self.path = path


_event_decoder = msgspec.json.Decoder(TrackingEvent)
_events_decoder = msgspec.json.Decoder(list[TrackingEvent])
_any_decoder = msgspec.json.Decoder()
_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
# What can go wrong decoding one element: msgspec's errors, bytes that are not UTF-8 (a
# UnicodeDecodeError, which is a ValueError) and nesting past msgspec's own depth limit.
_UNDECODABLE = (msgspec.MsgspecError, ValueError, RecursionError)

# Any escape, left to right, so that `\\ud83d` (an escaped backslash, then text) is not read
# as a surrogate: a pair is kept, a lone half becomes U+FFFD, every other escape is kept.
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"  # half of one
    rb"|\\."
)
_REPLACEMENT = rb"\ufffd"


def _mend(match: re.Match[bytes]) -> bytes:
    escape = match.group()
    return _REPLACEMENT if len(escape) == 6 and escape[2:3] in b"dD" else escape


def mend_lone_surrogates(body: bytes) -> tuple[bytes, int]:
    """`JSON.stringify` of a string cut in the middle of an emoji (a UTF-16 pair) writes the
    lone half as `\\ud83d`, which is no character. Each becomes U+FFFD; returns the body and
    how many were replaced."""
    if b"\\u" not in body:  # the usual case, C-fast
        return body, 0
    mended = 0

    def mend(match: re.Match[bytes]) -> bytes:
        nonlocal mended
        replaced = _mend(match)
        mended += replaced is _REPLACEMENT
        return replaced

    return _ESCAPE.sub(mend, body), mended


def _explain(error: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """msgspec says "Expected `str`, got `int` - at `$.metadata.url`"; split message and path."""
    message = str(error)
    match = _AT_PATH.search(message)
    if match is None:
        return message, prefix
    return message[: match.start()], prefix + match.group(1)[1:]


def _undecodable(error: BaseException, path: str) -> BodyError:
    if isinstance(error, msgspec.ValidationError):
        message, where = _explain(error, path)
        return BodyError(message, path=where)
    if isinstance(error, RecursionError):
        return BodyError(TOO_DEEP, path=path)
    if isinstance(error, UnicodeDecodeError):
        return BodyError(f"not valid UTF-8 (byte {error.start})", path=path)
    return BodyError(f"malformed JSON: {error}", path=path)


def decode_event(raw: bytes | msgspec.Raw, path: str = "$") -> TrackingEvent:
    try:
        event = _event_decoder.decode(raw)
    except _UNDECODABLE as error:
        raise _undecodable(error, path) from None
    check_properties(event.properties, f"{path}.properties")
    return event


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def check_properties(raw: msgspec.Raw, path: str) -> None:
    """An object of at most MAX_PROPERTIES_BYTES and MAX_PROPERTIES_DEPTH levels, whose every
    string is text and every number finite (`1e309` is refused): kept as the client's bytes,
    so it must read back as it was sent."""
    data = bytes(raw)
    if not data.startswith(b"{"):
        raise BodyError("Expected `object`", path=path)
    if len(data) > MAX_PROPERTIES_BYTES:
        raise BodyError(f"{len(data)} bytes; at most {MAX_PROPERTIES_BYTES}", path=path)
    try:
        value = _any_decoder.decode(data)  # a number out of range, bytes that are not UTF-8
        # Counting brackets is C-fast and over-counts (brackets in strings), so the exact
        # walk only runs when the count says the nesting could be too deep.
        depth = _depth(value) if data.count(b"{") + data.count(b"[") > MAX_PROPERTIES_DEPTH else 1
    except _UNDECODABLE as error:
        raise _undecodable(error, path) from None
    if depth > MAX_PROPERTIES_DEPTH:
        raise BodyError(f"nested {depth} levels deep; at most {MAX_PROPERTIES_DEPTH}", path=path)


def _first_byte(body: bytes) -> bytes:
    stripped = body.lstrip(b" \t\r\n")
    return stripped[:1]


# The tokens that shape a JSON array: strings (any bytes, escapes included), brackets, commas.
_SHAPE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def split_array(body: bytes) -> list[bytes]:
    """The elements of a JSON array, found by its brackets and commas alone, so that one
    element that does not decode (a string that is not UTF-8, a number out of range, nesting
    past any limit) is judged on its own and never hides its neighbours."""
    start = body.index(b"[") + 1
    depth, element = 0, start
    items: list[bytes] = []
    for token in _SHAPE.finditer(body, start):
        mark = token.group()
        if mark in (b"[", b"{"):
            depth += 1
        elif mark in (b"]", b"}"):
            if depth == 0:
                if mark == b"]":
                    last = body[element : token.start()].strip()
                    if last or items:
                        items.append(last)
                    if body[token.end() :].strip():
                        raise BodyError("malformed JSON: text after the array")
                    return items
                raise BodyError("malformed JSON: unbalanced brackets")
            depth -= 1
        elif mark == b"," and depth == 0:
            items.append(body[element : token.start()].strip())
            element = token.end()
    raise BodyError("malformed JSON: the array is not closed")


def decode_body(body: bytes) -> Decoded:
    """One event object, or an array of up to MAX_EVENTS_PER_REQUEST judged one by one."""
    body, mended = mend_lone_surrogates(body)
    if mended:
        LONE_SURROGATES.inc(mended)
    first = _first_byte(body)
    if not first:
        raise BodyError("empty body: send one event object or an array of events")
    if first != b"[":
        return Decoded(is_array=False, events=[(0, decode_event(body))], rejected=[])
    try:
        # Fast path: the whole array valid in one pass (then only the properties checks).
        all_events = _events_decoder.decode(body)
    except _UNDECODABLE:
        pass
    else:
        if 0 < len(all_events) <= MAX_EVENTS_PER_REQUEST:
            return _checked(all_events)
    items = split_array(body)
    if not items:
        raise BodyError("empty array: send at least one event")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise BodyError(
            f"{len(items)} events in one request; at most {MAX_EVENTS_PER_REQUEST}", status=413
        )
    events: list[tuple[int, TrackingEvent]] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        path = f"$[{index}]"
        try:
            if not item:
                raise BodyError("malformed JSON: an empty element", path=path)
            events.append((index, decode_event(item, path=path)))
        except BodyError as error:
            rejected.append(Rejection(index=index, error=str(error), path=error.path))
    return Decoded(is_array=True, events=events, rejected=rejected)


def _checked(all_events: list[TrackingEvent]) -> Decoded:
    events: list[tuple[int, TrackingEvent]] = []
    rejected: list[Rejection] = []
    for index, event in enumerate(all_events):
        path = f"$[{index}].properties"
        try:
            check_properties(event.properties, path)
        except BodyError as error:
            rejected.append(Rejection(index=index, error=str(error), path=error.path))
        else:
            events.append((index, event))
    return Decoded(is_array=True, events=events, rejected=rejected)
