"""The tracking event contract (the platform's tracking schema), decoded straight from bytes."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

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
_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")


def _explain(error: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """msgspec says "Expected `str`, got `int` - at `$.metadata.url`"; split message and path."""
    message = str(error)
    match = _AT_PATH.search(message)
    if match is None:
        return message, prefix
    return message[: match.start()], prefix + match.group(1)[1:]


def decode_event(raw: bytes | msgspec.Raw, path: str = "$") -> TrackingEvent:
    try:
        event = _event_decoder.decode(raw)
    except msgspec.ValidationError as error:
        message, where = _explain(error, path)
        raise BodyError(message, path=where) from None
    except msgspec.DecodeError as error:
        raise BodyError(f"malformed JSON: {error}", path=path) from None
    except RecursionError:
        raise BodyError(TOO_DEEP, path=path) from None
    check_properties(event.properties, f"{path}.properties")
    return event


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def check_properties(raw: msgspec.Raw, path: str) -> None:
    data = bytes(raw)
    if not data.startswith(b"{"):
        raise BodyError("Expected `object`", path=path)
    if len(data) > MAX_PROPERTIES_BYTES:
        raise BodyError(f"{len(data)} bytes; at most {MAX_PROPERTIES_BYTES}", path=path)
    # Counting brackets is C-fast and over-counts (brackets in strings), so the exact walk
    # only runs when the count says the nesting could be too deep.
    if data.count(b"{") + data.count(b"[") > MAX_PROPERTIES_DEPTH:
        try:
            depth = _depth(_any_decoder.decode(data))
        except RecursionError:
            raise BodyError(TOO_DEEP, path=path) from None
        if depth > MAX_PROPERTIES_DEPTH:
            raise BodyError(
                f"nested {depth} levels deep; at most {MAX_PROPERTIES_DEPTH}", path=path
            )


def _first_byte(body: bytes) -> bytes:
    stripped = body.lstrip(b" \t\r\n")
    return stripped[:1]


def decode_body(body: bytes) -> Decoded:
    """One event object, or an array of up to MAX_EVENTS_PER_REQUEST judged one by one."""
    first = _first_byte(body)
    if not first:
        raise BodyError("empty body: send one event object or an array of events")
    if first != b"[":
        return Decoded(is_array=False, events=[(0, decode_event(body))], rejected=[])
    try:
        # Fast path: the whole array valid in one pass (then only the properties checks).
        all_events = _events_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    else:
        if 0 < len(all_events) <= MAX_EVENTS_PER_REQUEST:
            return _checked(all_events)
    try:
        items = _array_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BodyError(f"malformed JSON: {error}") from None
    except RecursionError:
        raise BodyError(TOO_DEEP) from None
    if not items:
        raise BodyError("empty array: send at least one event")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise BodyError(
            f"{len(items)} events in one request; at most {MAX_EVENTS_PER_REQUEST}", status=413
        )
    events: list[tuple[int, TrackingEvent]] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            events.append((index, decode_event(item, path=f"$[{index}]")))
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
