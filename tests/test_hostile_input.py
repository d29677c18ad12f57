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

from ingest.schema import BodyError, decode_body
from tests.conftest import DOWNLOAD_KEY, TEST_REDIS_URL, free_port
from tests.hostile import HOSTILE

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fuzz-secret-0123456789-abcdefghijklmnop"
TOKEN = jwt.encode(
    {"role": "ADMIN", "sub": "fuzz", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
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
def api_schema(live: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{live}/docs/openapi.json")


def test_no_endpoint_answers_a_server_error(
    api_schema: schemathesis.schemas.BaseSchema, live: str
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 16
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
