import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.settings import Settings
from materialized import snapshots
from tests.conftest import Running, consumer_of, encode, event, wait_for


async def stored(warehouse: Warehouse) -> list[dict]:  # type: ignore[type-arg]
    return await warehouse.dicts("SELECT * FROM tracking_events ORDER BY received_at, event_id")


async def test_a_single_event_lands_with_every_column(
    server: Running, warehouse: Warehouse
) -> None:
    sent = event(
        eventType="PRODUCT_VIEW",
        userId=str(uuid.uuid4()),
        timestamp="2026-03-29T00:59:59.250+00:00",
        properties={"productId": "kit-shaker-oak", "price": 1249.50, "tags": ["oak", None]},
    )
    before = datetime.now(UTC)
    response = await server.http.post("/v1/analytics/track", json=sent)
    assert response.status_code == 202
    event_id = uuid.UUID(response.json()["eventId"])
    assert event_id.version == 7
    await server.drain()

    (row,) = await stored(warehouse)
    assert row["event_id"] == event_id
    assert row["event_type"] == "PRODUCT_VIEW"
    assert str(row["session_id"]) == sent["sessionId"]
    assert str(row["user_id"]) == sent["userId"]
    received = row["received_at"].replace(tzinfo=UTC)
    assert before - timedelta(milliseconds=1) <= received <= datetime.now(UTC)
    assert row["client_timestamp"].replace(tzinfo=UTC) == datetime(
        2026, 3, 29, 0, 59, 59, 250000, tzinfo=UTC
    )
    assert row["url"] == "https://www.lomashwood.co.uk/kitchens/shaker-oak"
    assert row["path"] == "/kitchens/shaker-oak"
    assert row["referrer"] == "https://www.google.com/"
    assert row["user_agent"] == sent["metadata"]["userAgent"]
    assert row["device_type"] == "desktop"
    # The client's bytes for properties, kept as they were sent (httpx encodes compactly).
    assert row["properties"] == encode(sent["properties"]).decode()
    assert row["is_bot"] is False


async def test_an_array_lands_one_row_per_event(server: Running, warehouse: Warehouse) -> None:
    session = str(uuid.uuid4())
    sent = [
        event(eventType=kind, sessionId=session)
        for kind in ("PAGEVIEW", "PRODUCT_VIEW", "ADD_TO_WISHLIST", "BOOKING_START")
    ]
    response = await server.http.post("/v1/analytics/track", json=sent)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 4 and body["rejected"] == []
    await server.drain()
    rows = await stored(warehouse)
    assert sorted(str(r["event_id"]) for r in rows) == sorted(body["eventIds"])
    assert sorted(r["event_type"] for r in rows) == sorted(e["eventType"] for e in sent)
    assert {str(r["session_id"]) for r in rows} == {session}


async def test_sendbeacon_text_plain_is_accepted(server: Running, warehouse: Warehouse) -> None:
    response = await server.http.post(
        "/v1/analytics/track",
        content=encode(event()),
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 202
    await server.drain()
    assert len(await stored(warehouse)) == 1


async def test_client_event_id_and_upper_case_device_are_kept(
    server: Running, warehouse: Warehouse
) -> None:
    client_id = str(uuid.uuid4())
    sent = event(eventId=client_id)
    sent["metadata"]["deviceType"] = "MOBILE"
    response = await server.http.post("/v1/analytics/track", json=sent)
    assert response.json() == {"eventId": client_id}
    await server.drain()
    (row,) = await stored(warehouse)
    assert str(row["event_id"]) == client_id
    assert row["device_type"] == "mobile"


async def test_array_with_bad_items_stores_the_good_and_names_the_bad(
    server: Running, warehouse: Warehouse
) -> None:
    bad_type = event(eventType="PAGE_VIEW")
    bad_session = event(sessionId="not-a-uuid")
    sent = [event(), bad_type, event(), bad_session]
    response = await server.http.post("/v1/analytics/track", json=sent)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["path"]) for r in body["rejected"]] == [
        (1, "$[1].eventType"),
        (3, "$[3].sessionId"),
    ]
    assert "PAGE_VIEW" in body["rejected"][0]["error"]
    await server.drain()
    assert len(await stored(warehouse)) == 2


def _without(key: str) -> dict:  # type: ignore[type-arg]
    body = event()
    del body[key]
    return body


def _meta(**changes: object) -> dict:  # type: ignore[type-arg]
    body = event()
    body["metadata"] = {**body["metadata"], **changes}
    return body


BAD_BODIES = [
    pytest.param(
        encode(event(eventType="SIGNUP")),
        400,
        "$.eventType",
        "Invalid enum value",
        id="unknown-event-type",
    ),
    pytest.param(
        encode(_without("eventType")),
        400,
        "$",
        "missing required field `eventType`",
        id="missing-event-type",
    ),
    pytest.param(
        encode(event(sessionId="abc")), 400, "$.sessionId", "Invalid UUID", id="session-not-uuid"
    ),
    pytest.param(
        encode(event(userId=42)), 400, "$.userId", "Expected `uuid | null`", id="user-not-uuid"
    ),
    pytest.param(
        encode(_without("metadata")),
        400,
        "$",
        "missing required field `metadata`",
        id="missing-metadata",
    ),
    pytest.param(encode(_meta(url=7)), 400, "$.metadata.url", "Expected `str`", id="url-not-str"),
    pytest.param(encode(_meta(url="")), 400, "$.metadata.url", "length >= 1", id="url-empty"),
    pytest.param(
        encode(_meta(deviceType="x" * 33)),
        400,
        "$.metadata.deviceType",
        "length <= 32",
        id="device-too-long",
    ),
    pytest.param(
        encode(event(properties=[1, 2])),
        400,
        "$.properties",
        "Expected `object`",
        id="properties-not-object",
    ),
    pytest.param(
        encode(event(timestamp="yesterday")),
        400,
        "$.timestamp",
        "Invalid RFC3339",
        id="timestamp-not-iso",
    ),
    pytest.param(b'{"eventType": "PAGEVIEW",', 400, "$", "malformed JSON", id="truncated-json"),
    pytest.param(b"\xff\xfe\x00", 400, "$", "malformed JSON", id="not-utf8"),
    pytest.param(b"", 400, "$", "empty body", id="empty-body"),
    pytest.param(b"[]", 400, "$", "empty array", id="empty-array"),
    pytest.param(b'"PAGEVIEW"', 400, "$", "Expected `object`", id="json-string"),
    pytest.param(encode([event()] * 101), 413, "$", "at most 100", id="array-over-100"),
]


@pytest.mark.parametrize(("body", "status", "path", "says"), BAD_BODIES)
async def test_bad_input_is_refused_and_nothing_is_stored(
    server: Running, warehouse: Warehouse, body: bytes, status: int, path: str, says: str
) -> None:
    response = await server.http.post(
        "/v1/analytics/track", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["path"] == path
    assert says in answer["error"]
    await server.drain()
    assert await stored(warehouse) == []


async def test_array_where_every_event_is_bad_is_a_400(
    server: Running, warehouse: Warehouse
) -> None:
    response = await server.http.post("/v1/analytics/track", json=[{"eventType": "X"}, 3])
    assert response.status_code == 400
    assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    await server.drain()
    assert await stored(warehouse) == []


async def test_body_over_64_kib_is_413(server: Running, warehouse: Warehouse) -> None:
    big = event(properties={"blob": "x" * (64 * 1024)})
    response = await server.http.post("/v1/analytics/track", json=big)
    assert response.status_code == 413
    assert "size limit" in response.json()["error"]
    await server.drain()
    assert await stored(warehouse) == []


async def test_other_content_types_are_415(server: Running, warehouse: Warehouse) -> None:
    response = await server.http.post(
        "/v1/analytics/track",
        content=encode(event()),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    await server.drain()
    assert await stored(warehouse) == []


async def test_health_and_readiness(server: Running) -> None:
    assert (await server.http.get("/healthz")).json() == {"status": "ok"}

    async def consumer_connected() -> bool:
        return bool(
            consumer_of(server).connected.is_set()
            and server.services.runtime.publisher.is_connected
        )

    await wait_for(consumer_connected)
    ready = await server.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "clickhouse": True,
        "redis": True,
        "rabbitmq": True,
        "consumer": True,
    }


async def test_readiness_fails_when_a_dependency_is_unreachable(
    make_server,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    import msgspec

    from tests.conftest import free_port

    unreachable = msgspec.structs.replace(
        settings,
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    running = await make_server(unreachable)
    ready = await running.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "clickhouse": True,
        "redis": False,
        "rabbitmq": False,
        "consumer": False,
    }


async def test_metrics_can_require_a_bearer_token(
    make_server: Callable[[Settings], Any], settings: Settings
) -> None:
    token = "metrics-token-0123456789"
    running: Running = await make_server(msgspec.structs.replace(settings, metrics_token=token))
    refused = await running.http.get("/metrics")
    assert refused.status_code == 401
    assert "METRICS_TOKEN" in refused.json()["error"]
    wrong = await running.http.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    allowed = await running.http.get("/metrics", headers={"authorization": f"Bearer {token}"})
    assert allowed.status_code == 200
    assert "tracking_events_accepted_total" in allowed.text


async def test_metrics_read_the_snapshot_age_the_job_keeps_not_clickhouse(
    server: Running, warehouse: Warehouse
) -> None:
    await snapshots.mark_rebuilt(
        server.services.runtime.redis, datetime.now(UTC) - timedelta(minutes=30)
    )
    await warehouse.command("DETACH TABLE dashboard_snapshots")  # a query would fail
    try:
        text = (await server.http.get("/metrics")).text
    finally:
        await warehouse.command("ATTACH TABLE dashboard_snapshots")
    (line,) = [x for x in text.splitlines() if x.startswith("dashboard_snapshot_age_minutes ")]
    assert float(line.split()[1]) == pytest.approx(30, abs=0.5)
    assert "dashboard_snapshot_never_rebuilt 0.0" in text


async def test_metrics_count_a_never_rebuilt_install_from_its_installation(
    server: Running, warehouse: Warehouse, redis: Redis
) -> None:
    await warehouse.command(
        "ALTER TABLE schema_migrations UPDATE applied_at = now64(3) - INTERVAL 150 MINUTE"
        " WHERE 1 SETTINGS mutations_sync = 1"
    )
    text = (await server.http.get("/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("dashboard_snapshot_age_minutes ")]
    assert float(line.split()[1]) == pytest.approx(150, abs=0.5)  # what the rule fires on
    assert "dashboard_snapshot_never_rebuilt 1.0" in text
    # Redis lost the rebuild time: ClickHouse's newest snapshot answers and is put back.
    await warehouse.command(
        "INSERT INTO dashboard_snapshots (computed_at, range_start, range_end, label, body)"
        " VALUES (now64(3) - INTERVAL 20 MINUTE, now64(3), now64(3), 'today', '{}')"
    )
    text = (await server.http.get("/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("dashboard_snapshot_age_minutes ")]
    assert float(line.split()[1]) == pytest.approx(20, abs=0.5)
    assert "dashboard_snapshot_never_rebuilt 0.0" in text
    assert await redis.get(keys.DASHBOARD_REBUILT_AT) is not None


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("MOBILE", "mobile"), ("Tablet", "tablet"), ("smarttv", "smarttv"), ("Console", "Console")],
)
async def test_any_short_device_type_is_kept_and_the_known_ones_normalised(
    server: Running, warehouse: Warehouse, sent: str, stored: str
) -> None:
    body = event()
    body["metadata"]["deviceType"] = sent
    answer = await server.http.post("/v1/analytics/track", json=body)
    assert answer.status_code == 202
    await server.drain()
    assert await warehouse.scalar("SELECT device_type FROM tracking_events") == stored
