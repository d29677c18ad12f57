"""The published-message examples in docs/events.md, and a check that a real message has each
example's shape: the same fields at every level, each of the same JSON type (null standing
for any type, as a nullable field's example may show either)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

EVENTS_DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"
_EXAMPLE = re.compile(r"<!-- example: (?P<key>[\w.]+) -->\s*```json\n(?P<body>.*?)```", re.S)
ENVELOPE_TOPIC = "lomash.analytics.event.tracked"  # its example shows the whole envelope


@cache
def examples() -> dict[str, Any]:
    return {m["key"]: json.loads(m["body"]) for m in _EXAMPLE.finditer(EVENTS_DOC.read_text())}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def differences(example: Any, real: Any, at: str = "$") -> list[str]:
    if example is None or real is None:
        return []
    if isinstance(example, dict) and isinstance(real, dict):
        found = [f"{at}.{k}: documented, not published" for k in example.keys() - real.keys()]
        found += [f"{at}.{k}: published, not documented" for k in real.keys() - example.keys()]
        for key in example.keys() & real.keys():
            found += differences(example[key], real[key], f"{at}.{key}")
        return found
    if isinstance(example, list) and isinstance(real, list):
        return [d for item in real for d in differences(example[0], item, f"{at}[]")]
    if _kind(example) != _kind(real):
        return [f"{at}: documented as {_kind(example)}, published as {_kind(real)}"]
    return []


def assert_as_documented(routing_key: str, body: bytes) -> None:
    """`body` is a message as received from the exchange on `routing_key`."""
    message = json.loads(body)
    envelope = examples()[ENVELOPE_TOPIC]
    shell = {**envelope, "payload": None}
    problems = differences(shell, {**message, "payload": None})
    assert message["version"] == envelope["version"]
    if routing_key == ENVELOPE_TOPIC:
        problems += differences(envelope["payload"], message["payload"], "$.payload")
        assert message["eventType"] == envelope["eventType"]
    else:
        problems += differences(examples()[routing_key], message["payload"], "$.payload")
    assert not problems, f"{routing_key} is not as docs/events.md shows it: {problems}"
