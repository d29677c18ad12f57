"""Request bodies meant to hurt a JSON decoder; each must get a 4xx."""

import msgspec
import pytest

from tests.conftest import event


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


HOSTILE = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-arrays"),
    pytest.param(nested(2000), id="deep-objects"),
    pytest.param(b'{"eventType": "' + b"A" * 60_000 + b'"}', id="huge-string"),
    pytest.param(b'{"eventType": NaN}', id="nan"),
    pytest.param(
        msgspec.json.encode(event()).replace(b'"price":1249.5', b'"price":Infinity'), id="infinity"
    ),
    pytest.param(b'{"eventType":"PAGEVIEW","eventType":"CLICK"}', id="duplicate-keys"),
    pytest.param(b'{"eventType": "PAGEVIEW", "sessionId": "\xc3\x28"}', id="invalid-utf8"),
    pytest.param(b"\x00\x01\x02", id="binary"),
    pytest.param(b'{"eventType":1e999999}', id="huge-number"),
]
