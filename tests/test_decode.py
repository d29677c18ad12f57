"""The beacon body decoded with no service: one event or an array judged element by element,
each refusal naming its field path; and the stats filter parser."""

import json
import uuid
from typing import Any

import pytest

from ingest.schema import (
    MAX_EVENTS_PER_REQUEST,
    MAX_PROPERTIES_DEPTH,
    BodyError,
    decode_body,
    split_array,
)
from materialized.stats import FilterError, escape_filter_value, parse_filter


def beacon(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": "PAGEVIEW",
        "sessionId": str(uuid.uuid4()),
        "metadata": {"url": "https://www.lomashwood.co.uk/kitchens"},
        "properties": {},
    }
    return body | overrides


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_one_event_decodes_to_one_event() -> None:
    decoded = decode_body(raw(beacon()))
    assert not decoded.is_array and decoded.rejected == []
    ((index, event),) = decoded.events
    assert index == 0 and event.event_type == "PAGEVIEW"


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        (beacon(eventType="TELEPORT"), "$.eventType", "Invalid enum value"),
        (beacon(sessionId="not-a-uuid"), "$.sessionId", "UUID"),
        (beacon(metadata={}), "$.metadata", "url"),
        (beacon(properties=[1]), "$.properties", "object"),
    ],
)
def test_a_bad_event_names_its_field(body: dict[str, Any], path: str, says: str) -> None:
    with pytest.raises(BodyError) as refused:
        decode_body(raw(body))
    assert refused.value.path == path and says in str(refused.value)


def test_an_array_keeps_the_good_and_names_each_bad_by_index() -> None:
    body = b"[" + b",".join([raw(beacon()), b'{"eventType": 1}', raw(beacon()), b"\xff"]) + b"]"
    decoded = decode_body(body)
    assert decoded.is_array
    assert [i for i, _ in decoded.events] == [0, 2]
    assert [(r.index, r.path.split(".")[0]) for r in decoded.rejected] == [(1, "$[1]"), (3, "$[3]")]


def test_properties_past_the_depth_limit_are_refused_on_their_path() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_PROPERTIES_DEPTH + 1):
        deep = {"k": deep}
    decoded = decode_body(raw([beacon(), beacon(properties=deep)]))
    ((rejected),) = decoded.rejected
    assert rejected.index == 1 and rejected.path == "$[1].properties"


def test_a_lone_surrogate_is_mended_and_a_pair_kept() -> None:
    body = raw(beacon(properties={"a": "x"})).replace(b'"x"', b'"\\ud83d \\ud83d\\ude00"')
    ((_, event),) = decode_body(body).events
    assert json.loads(bytes(event.properties)) == {"a": "\ufffd \U0001f600"}


def test_too_many_events_is_413() -> None:
    with pytest.raises(BodyError) as refused:
        decode_body(raw([beacon()] * (MAX_EVENTS_PER_REQUEST + 1)))
    assert refused.value.status == 413


@pytest.mark.parametrize("body", [b"", b"[]", b"[1,", b"[1] 2", b"[[1]"])
def test_bodies_that_are_no_events_are_400(body: bytes) -> None:
    with pytest.raises(BodyError) as refused:
        decode_body(body)
    assert refused.value.status == 400


def test_the_splitter_sees_brackets_and_commas_in_strings_as_text() -> None:
    assert split_array(b'["a,]", {"b": "[,"}, 3]') == [b'"a,]"', b'{"b": "[,"}', b"3"]


def test_a_filter_reads_pairs_and_escapes() -> None:
    assert parse_filter("country:GB;device:mobile") == {"country": "GB", "device": "mobile"}
    page = "/a;country:ZZ\\"
    assert parse_filter(f"page:{escape_filter_value(page)}") == {"page": page}
    assert parse_filter("") == {} and parse_filter(None) == {}


@pytest.mark.parametrize(
    ("raw_filter", "says"),
    [
        ("country", "is not `dimension:value`"),
        ("planet:Mars", "unknown dimension"),
        ("country:GB;country:FR", "given twice"),
        ("page:" + "x" * 5000, "chars"),
    ],
)
def test_a_bad_filter_says_which_part(raw_filter: str, says: str) -> None:
    with pytest.raises(FilterError, match=says):
        parse_filter(raw_filter)


def test_every_reason_a_request_is_refused_for_has_one_status() -> None:
    from core.metrics import Drop
    from ingest.track import STATUS

    # A duplicate is acknowledged (202) and found later, by the writer: no status of its own.
    assert set(STATUS) == set(Drop) - {Drop.DUPLICATE}
    assert all(400 <= status < 600 for status in STATUS.values())
