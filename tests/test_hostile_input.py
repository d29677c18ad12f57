"""Hostile and broken input: every endpoint fuzzed from its OpenAPI document (schemathesis),
and the tracking decoder fuzzed (hypothesis). A 4xx each time, never a 5xx, process unharmed."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

# Imported here, at collection, not lazily by `from_url` inside a test: pytest rewrites a
# plugin's modules as they are imported, and CPython 3.11.7's ast.parse fails ("AST
# constructor recursion depth mismatch") when another thread changes the recursion limit
# meanwhile, as hypothesis does while the fuzz tests run.
from schemathesis.specs.openapi.schemas import OpenApiSchema

from api.openapi import DOCUMENT
from ingest.schema import BodyError, decode_body
from tests.conftest import AUDIT_KEY, DOWNLOAD_KEY, TEST_REDIS_URL, free_port
from tests.hostile import HOSTILE
from tests.service_process import query, start_service, stop

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fuzz-secret-0123456789-abcdefghijklmnop"
TOKEN = jwt.encode(
    {
        "role": "ADMIN",
        "sub": "8d1f3c2a-6b4e-4f7a-9c0d-2e5b7a9c1f34",
        "exp": int(time.time()) + 3600,
    },
    SECRET,
    algorithm="HS256",
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service in its own process: schemathesis calls it synchronously."""
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k.isupper() and not k.startswith("PYTEST")},
        "CLICKHOUSE_URL": f"chdb://{data / 'ch'}",
        "PORT": str(port),
        "REDIS_URL": TEST_REDIS_URL,
        "RATE_LIMIT": "1000000/minute",
        "RATE_LIMIT_EVENTS": "100000000/minute",
        "AUTH_JWT_SECRET": SECRET,
        "DOWNLOAD_SIGNING_KEY": DOWNLOAD_KEY,
        "ERASURE_AUDIT_KEY": AUDIT_KEY,
        "STORAGE_URL": f"file://{data / 'objects'}",
        "TRACKING_LOG_DIR": str(data / "tracking-log"),
        "AMQP_EXCHANGE": "test.fuzz",
        "AMQP_QUEUE": "test.fuzz.q",
    }
    log = (data / "service.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if b"Worker ready" in (data / "service.log").read_bytes():
            break
        time.sleep(0.1)
    yield base
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (data / "service.log").read_text()[-3000:]
    log.close()
    assert b"unhandled error" not in (data / "service.log").read_bytes()


@pytest.fixture(scope="module")
def api_schema(live: str) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{live}/docs/openapi.json")


def test_no_endpoint_answers_a_server_error(api_schema: OpenApiSchema, live: str) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    documented = sum(len(methods) for methods in DOCUMENT["paths"].values())
    assert len(operations) == documented >= 17
    for operation in operations:

        @given(case=operation.as_strategy())
        @hsettings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=live,
                headers={"authorization": f"Bearer {TOKEN}"},
                # Every answer, errors included, must match the document's schema for it.
                checks=[not_a_server_error, response_schema_conformance],
            )

        call()


def test_the_document_is_served(live: str) -> None:
    document = httpx.get(f"{live}/docs/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/analytics/track" in document["paths"]
    page = httpx.get(f"{live}/docs")
    assert "text/html" in page.headers["content-type"] and "/docs/openapi.json" in page.text


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_bodies_get_a_4xx_and_the_service_stays_up(live: str, body: bytes) -> None:
    answer = httpx.post(
        f"{live}/v1/analytics/track",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["error"]
    assert httpx.get(f"{live}/healthz").status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "eventType": st.sampled_from(["PAGEVIEW", "CLICK", "pageview", ""]) | JSON,
        "sessionId": st.uuids().map(str) | JSON,
        "userId": st.none() | st.uuids().map(str) | JSON,
        "metadata": st.fixed_dictionaries(
            {}, optional={"url": st.text() | JSON, "deviceType": st.text() | JSON}
        )
        | JSON,
        "properties": JSON,
        "eventId": st.uuids().map(str) | JSON,
        "timestamp": st.datetimes().map(lambda d: d.isoformat()) | JSON,
    },
)


@given(
    st.one_of(FIELDS, st.lists(FIELDS, max_size=120), JSON).map(msgspec.json.encode)
    | st.binary(max_size=2000)
)
@hsettings(max_examples=400, deadline=None)
def test_the_decoder_answers_every_input_with_events_or_a_client_error(body: bytes) -> None:
    try:
        decoded = decode_body(body)
    except BodyError as error:
        assert error.status in (400, 413)
        assert str(error)
        return
    assert decoded.events or decoded.rejected
    for _, parsed in decoded.events:
        # What is accepted is stored as is: the properties must be a JSON object.
        assert isinstance(msgspec.json.decode(bytes(parsed.properties)), dict)


TYPES = ["PAGEVIEW", "CLICK", "FILTER_APPLY", "PRODUCT_VIEW", "BROCHURE_REQUEST"]
SCALAR = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.booleans()
    | st.none()
)


@st.composite
def good_event(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid event (its eventId, its bytes), sometimes with a string cut mid-emoji as
    JSON.stringify writes it: mended to U+FFFD, still valid."""
    event_id = str(draw(st.uuids()))
    body = {
        "eventId": event_id,
        "eventType": draw(st.sampled_from(TYPES)),
        "sessionId": str(draw(st.uuids())),
        "metadata": {"url": "https://www.lomashwood.co.uk/" + draw(st.text(max_size=40))},
        # At least one key, so that a corruption inserted first still leaves valid JSON.
        "properties": draw(st.dictionaries(st.text(max_size=10), SCALAR, min_size=1, max_size=5)),
    }
    encoded = msgspec.json.encode(body)
    if draw(st.booleans()):
        encoded = encoded.replace(b'"properties":{', b'"properties":{"cut":"ab\\ud83d",', 1)
    return event_id, encoded


CORRUPTIONS: list[tuple[bytes, bytes]] = [
    (b'"eventType":"', b'"eventType":"NOT_'),  # not a tracking type
    (b'"url":"https://', b'"url":"https://\xff\xfe'),  # bytes that are not UTF-8
    (b'"properties":{', b'"properties":{"big":1e309,'),  # a number out of range
    (b'"properties":{', b'"properties":{"deep":[[[[[[[1]]]]]]],'),  # nested past the limit
    (b'"sessionId":"', b'"sessionId":"x'),  # not a uuid
    (b'"properties":{', b'"properties":[{'),  # not an object (and then unbalanced: fixed below)
]


@st.composite
def bad_event(draw: st.DrawFn) -> bytes:
    _, encoded = draw(good_event())
    old, new = draw(st.sampled_from(CORRUPTIONS))
    corrupted = encoded.replace(old, new, 1)
    if new.endswith(b"[{"):
        corrupted = corrupted[:-1] + b"]}"  # `"properties":[{...}]` closes as an array
    return corrupted


MIXED = st.lists(
    st.one_of(
        good_event().map(lambda g: (True, g[0], g[1])), bad_event().map(lambda b: (False, "", b))
    ),
    min_size=1,
    max_size=30,
)


def mixed_body(elements: list[tuple[bool, str, bytes]]) -> bytes:
    return b"[" + b",".join(raw for _, _, raw in elements) + b"]"


@given(MIXED)
@hsettings(max_examples=300, deadline=None)
def test_in_a_mixed_array_each_element_is_judged_alone(
    elements: list[tuple[bool, str, bytes]],
) -> None:
    body = mixed_body(elements)
    good = [i for i, (ok, _, _) in enumerate(elements) if ok]
    decoded = decode_body(body)  # with nothing valid, the 400 names each element
    assert [i for i, _ in decoded.events] == good
    assert [r.index for r in decoded.rejected] == [i for i in range(len(elements)) if i not in good]
    assert all(r.path.startswith(f"$[{r.index}]") for r in decoded.rejected)
    for _, event in decoded.events:
        assert b"\\ud83d" not in bytes(event.properties)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("isolated_processes")
def test_mixed_arrays_store_every_good_event_once(tmp_path: Path) -> None:
    """Through the real service: whatever bad elements sit beside them, the good events of
    every array are answered 202 and stored, each once, and nothing answers a 5xx."""
    sent: list[str] = []
    proc, base = start_service(tmp_path)
    with httpx.Client(base_url=base, timeout=30) as http:

        @given(MIXED)
        @hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        def post(elements: list[tuple[bool, str, bytes]]) -> None:
            answer = http.post(
                "/v1/analytics/track",
                content=mixed_body(elements),
                headers={"content-type": "text/plain"},
            )
            good = [event_id for ok, event_id, _ in elements if ok]
            if not good:
                assert answer.status_code == 400, answer.text
                return
            assert answer.status_code == 202, (answer.text, mixed_body(elements))
            assert answer.json()["eventIds"] == good
            sent.extend(good)

        post()
    assert stop(proc) == 0
    assert b"unhandled error" not in (tmp_path / "service.log").read_bytes()
    stored = query(tmp_path, "SELECT toString(event_id) FROM tracking_events")
    assert sorted(r[0] for r in stored) == sorted(set(sent))
