"""The beacon pipeline end to end on real Redis and chDB: geo, agent, sessions, duplicates,
rate limits, CORS, limits on properties, metrics and the tracker script."""

import asyncio
import gzip
import time
import uuid
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.settings import Settings
from ingest.ratelimit import Budget, RateLimiter
from tests.conftest import Running, counter, event, free_port
from tests.test_enrich import GOOGLEBOT, IPHONE

TRACK = "/v1/analytics/track"


async def stored(
    warehouse: Warehouse, order: str = "session_id, session_seq"
) -> list[dict[str, Any]]:
    return await warehouse.dicts(f"SELECT * FROM tracking_events ORDER BY {order}")


async def start(make_server, settings: Settings, **changes: Any) -> Running:  # type: ignore[no-untyped-def]
    running: Running = await make_server(msgspec.structs.replace(settings, **changes))
    return running


async def test_geo_from_a_trusted_proxy_and_never_the_raw_ip(
    make_server,
    settings: Settings,
    warehouse: Warehouse,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(make_server, settings, trusted_proxies=("127.0.0.1",))
    sent = event()
    response = await server.http.post(TRACK, json=sent, headers={"x-forwarded-for": "81.2.69.160"})
    assert response.status_code == 202
    await server.drain()
    (row,) = await stored(warehouse)
    assert (row["country"], row["region"], row["city"]) == ("GB", "England", "London")
    raw = await warehouse.scalar(
        "SELECT count() FROM tracking_events WHERE position(toString(tuple(*)), '81.2.69.160') > 0"
    )
    assert raw == 0


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    server: Running, warehouse: Warehouse
) -> None:
    await server.http.post(TRACK, json=event(), headers={"x-forwarded-for": "81.2.69.160"})
    await server.drain()
    (row,) = await stored(warehouse)
    assert row["country"] == ""


async def test_agent_fields_and_bots_are_stored_flagged(
    server: Running, warehouse: Warehouse
) -> None:
    phone, bot = event(), event()
    phone["metadata"] = {"url": "https://www.lomashwood.co.uk/", "userAgent": IPHONE}
    bot["metadata"]["userAgent"] = GOOGLEBOT
    await server.http.post(TRACK, json=[phone, bot])
    await server.drain()
    rows = {r["browser"]: r for r in await stored(warehouse)}
    assert rows["Mobile Safari"]["os"] == "iOS"
    assert rows["Mobile Safari"]["device_type"] == "mobile"
    assert rows["Mobile Safari"]["is_bot"] is False
    assert rows["Googlebot"]["is_bot"] is True


async def test_user_agent_header_is_used_when_metadata_has_none(
    server: Running, warehouse: Warehouse
) -> None:
    sent = event()
    sent["metadata"] = {"url": "https://www.lomashwood.co.uk/"}
    await server.http.post(TRACK, json=sent, headers={"user-agent": IPHONE})
    await server.drain()
    (row,) = await stored(warehouse)
    assert (row["user_agent"], row["browser"], row["device_type"]) == (
        IPHONE,
        "Mobile Safari",
        "mobile",
    )


async def test_session_data_is_attached_and_events_are_numbered(
    server: Running, warehouse: Warehouse
) -> None:
    session = str(uuid.uuid4())
    landing = (
        "https://www.lomashwood.co.uk/kitchens?utm_source=google&utm_medium=cpc&utm_campaign=spring"
    )
    first = event(sessionId=session)
    first["metadata"]["url"] = landing
    await server.http.post(TRACK, json=first)
    await server.drain()  # the second request lands in a later batch
    later = [event(sessionId=session, eventType=t) for t in ("PRODUCT_VIEW", "ADD_TO_WISHLIST")]
    await server.http.post(TRACK, json=later)
    await server.drain()
    rows = await stored(warehouse)
    assert [r["session_seq"] for r in rows] == [1, 2, 3]
    assert [r["event_type"] for r in rows] == ["PAGEVIEW", "PRODUCT_VIEW", "ADD_TO_WISHLIST"]
    assert {r["landing_page"] for r in rows} == {landing}
    assert {r["entry_referrer"] for r in rows} == {"https://www.google.com/"}
    assert {(r["utm_source"], r["utm_medium"], r["utm_campaign"]) for r in rows} == {
        ("google", "cpc", "spring")
    }
    assert {r["session_started_at"] for r in rows} == {rows[0]["received_at"]}


async def test_a_known_user_in_a_new_session_is_returning(
    server: Running, warehouse: Warehouse
) -> None:
    user = str(uuid.uuid4())
    await server.http.post(TRACK, json=event(userId=user))
    await server.drain()
    await server.http.post(TRACK, json=[event(userId=user), event(userId=None)])
    await server.drain()
    rows = await stored(warehouse, order="received_at, session_seq")
    assert [(r["user_id"] is not None, r["is_returning"]) for r in rows] == [
        (True, False),
        (True, True),
        (False, False),
    ]


async def test_a_retried_event_id_is_acknowledged_but_stored_once(
    server: Running, warehouse: Warehouse
) -> None:
    sent = event(eventId=str(uuid.uuid4()))
    duplicates = counter("tracking_events_dropped", reason="duplicate")
    first = await server.http.post(TRACK, json=sent)
    await server.drain()
    again = await server.http.post(TRACK, json=sent)
    in_one_array = await server.http.post(TRACK, json=[sent, sent])
    await server.drain()
    assert first.status_code == again.status_code == in_one_array.status_code == 202
    assert first.json() == again.json() == {"eventId": sent["eventId"]}
    rows = await stored(warehouse)
    assert len(rows) == 1
    assert rows[0]["session_seq"] == 1  # duplicates do not advance the session
    assert counter("tracking_events_dropped", reason="duplicate") - duplicates == 3


async def test_duplicates_within_one_array_keep_the_first(
    server: Running, warehouse: Warehouse
) -> None:
    twice = event(eventId=str(uuid.uuid4()))
    await server.http.post(TRACK, json=[twice, event(), twice])
    await server.drain()
    assert len(await stored(warehouse)) == 2


async def test_rate_limit_answers_429_with_retry_after_per_client(
    make_server,
    settings: Settings,
    warehouse: Warehouse,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(
        make_server, settings, rate_limit="3/minute", trusted_proxies=("127.0.0.1",)
    )
    answers = [
        (await server.http.post(TRACK, json=event(), headers={"x-forwarded-for": "81.2.69.160"}))
        for _ in range(5)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    retry_after = int(answers[3].headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert "3/minute" in answers[3].json()["error"]
    # Another client behind the same proxy has its own allowance.
    other = await server.http.post(
        TRACK, json=event(), headers={"x-forwarded-for": "89.160.20.112"}
    )
    assert other.status_code == 202
    await server.drain()
    assert len(await stored(warehouse)) == 4


async def test_concurrent_requests_share_the_limit_exactly(
    make_server,
    settings: Settings,
    warehouse: Warehouse,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(make_server, settings, rate_limit="25/minute")
    answers = await asyncio.gather(*(server.http.post(TRACK, json=event()) for _ in range(60)))
    assert sorted(a.status_code for a in answers) == [202] * 25 + [429] * 35
    await server.drain()
    assert len(await stored(warehouse)) == 25


async def test_forged_forwarded_for_does_not_bypass_the_limit(
    make_server,
    settings: Settings,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(make_server, settings, rate_limit="2/minute")
    codes = [
        (
            await server.http.post(TRACK, json=event(), headers={"x-forwarded-for": f"1.2.3.{i}"})
        ).status_code
        for i in range(4)
    ]
    assert codes == [202, 202, 429, 429]


async def test_redis_down_ingest_fails_open_and_counts_it(
    make_server,
    settings: Settings,
    warehouse: Warehouse,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(
        make_server, settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit="1/minute"
    )
    answers = [await server.http.post(TRACK, json=event()) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    await server.drain()
    rows = await stored(warehouse)
    assert len(rows) == 3
    assert {r["session_seq"] for r in rows} == {0}  # no session data without Redis
    metrics = (await server.http.get("/metrics")).text
    assert "rate_limit_fail_open_total" in metrics
    assert 'redis_unavailable_total{operation="session_enrichment"}' in metrics


async def test_cors_preflight_and_simple_requests(server: Running) -> None:
    preflight = await server.http.options(
        TRACK,
        headers={
            "origin": "https://www.lomashwood.co.uk",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-max-age"] == "86400"
    assert "access-control-allow-credentials" not in preflight.headers
    posted = await server.http.post(TRACK, json=event(), headers={"origin": "https://x.test"})
    assert posted.headers["access-control-allow-origin"] == "*"
    bad = await server.http.post(TRACK, content=b"{", headers={"origin": "https://x.test"})
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == "*"  # the page can read the error


async def test_cors_allow_list_names_only_listed_origins(
    make_server,
    settings: Settings,  # type: ignore[no-untyped-def]
) -> None:
    server = await start(make_server, settings, cors_origins=("https://www.lomashwood.co.uk",))
    ours = await server.http.post(
        TRACK, json=event(), headers={"origin": "https://www.lomashwood.co.uk"}
    )
    assert ours.headers["access-control-allow-origin"] == "https://www.lomashwood.co.uk"
    assert ours.headers["vary"] == "Origin"
    theirs = await server.http.post(TRACK, json=event(), headers={"origin": "https://evil.test"})
    assert "access-control-allow-origin" not in theirs.headers


@pytest.mark.parametrize(
    ("properties", "says"),
    [
        ({"blob": "x" * 9000}, "at most 8192"),
        ({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}, "nested 6 levels deep"),
        ({"a": [[[[[[1]]]]]]}, "nested 7 levels deep"),
    ],
)
async def test_properties_too_big_or_too_deep_are_400(
    server: Running, warehouse: Warehouse, properties: dict[str, Any], says: str
) -> None:
    single = await server.http.post(TRACK, json=event(properties=properties))
    assert single.status_code == 400
    assert single.json()["path"] == "$.properties"
    assert says in single.json()["error"]
    in_array = await server.http.post(TRACK, json=[event(), event(properties=properties)])
    assert in_array.status_code == 202
    assert in_array.json()["rejected"][0]["path"] == "$[1].properties"
    await server.drain()
    assert len(await stored(warehouse)) == 1


async def test_brackets_inside_strings_are_not_nesting(server: Running) -> None:
    response = await server.http.post(TRACK, json=event(properties={"q": "[[[[[[{{{{{{"}))
    assert response.status_code == 202


async def test_metrics_expose_rates_and_drop_reasons(server: Running) -> None:
    await server.http.post(TRACK, json=[event(), {"eventType": "NOPE"}])
    await server.drain()
    text = (await server.http.get("/metrics")).text
    for name in (
        "tracking_ingest_rate_per_second",
        "analytics_event_drop_rate",
        'tracking_events_dropped_total{reason="invalid"}',
        "tracking_events_accepted_total",
        "tracking_events_stored_total",
        "tracking_batch_rows_bucket",
        "tracking_flush_seconds_bucket",
        "tracking_retry_queue_depth 0.0",
        "tracking_log_unplaced_rows 0.0",
        "analytics_publish_backlog",
    ):
        assert name in text, name


@pytest.fixture
def fast_rate_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from api import app

    monkeypatch.setattr(app, "GAUGES_REFRESH_SECONDS", 0.05)


async def test_rate_gauges_stay_current_without_a_scrape(
    fast_rate_refresh: None, server: Running
) -> None:
    # With several API workers a scrape reaches one; the others' gauges must not be stale.
    from core.metrics import INGEST_RATE

    INGEST_RATE.set(-1)
    assert (await server.http.post(TRACK, json=event())).status_code == 202
    for _ in range(100):
        if INGEST_RATE._value.get() > 0:
            break
        await asyncio.sleep(0.02)
    assert INGEST_RATE._value.get() > 0


async def test_tracker_script_is_served_small_and_cacheable(server: Running) -> None:
    plain = await server.http.get(
        "/v1/analytics/tracker.js", headers={"accept-encoding": "identity"}
    )
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("application/javascript")
    assert "max-age=3600" in plain.headers["cache-control"]
    assert "lomash" in plain.text and "sendBeacon" in plain.text
    zipped = await server.http.get("/v1/analytics/tracker.js", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    # 2.4 KB before the opt-out and DNT/GPC (issue 29), 2.9 KB with them: a budget of 3 KB.
    assert len(gzip.compress(plain.content)) < 3072
    again = await server.http.get(
        "/v1/analytics/tracker.js", headers={"if-none-match": plain.headers["etag"]}
    )
    assert again.status_code == 304


async def test_redis_keys_expire(server: Running, redis: Redis) -> None:
    await server.http.post(TRACK, json=event(userId=str(uuid.uuid4())))
    await server.drain()
    keys = [k async for k in redis.scan_iter("lw:*")]
    assert keys
    for key in keys:
        assert await redis.ttl(key) > 0, key


async def test_ingest_refuses_with_503_while_too_many_rows_wait_to_be_stored(
    make_server, settings: Settings, warehouse: Warehouse
) -> None:
    # The writer never flushes by itself here: what is accepted waits in its buffer.
    server = await start(
        make_server,
        settings,
        ingest_max_pending_rows=1000,
        flush_max_rows=1_000_000,
        flush_interval_ms=600_000,
    )
    overloaded = counter("tracking_events_dropped", reason="overloaded")
    accepted: list[str] = []
    for _ in range(10):
        answer = await server.http.post(TRACK, json=[event() for _ in range(100)])
        assert answer.status_code == 202
        accepted += answer.json()["eventIds"]
    refused = await server.http.post(TRACK, json=[event() for _ in range(5)])
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "1000 events wait to be stored" in refused.json()["error"]
    assert counter("tracking_events_dropped", reason="overloaded") - overloaded == 5
    await server.drain()  # the writer catches up: accepted again
    answer = await server.http.post(TRACK, json=event())
    assert answer.status_code == 202
    await server.drain()
    rows = await stored(warehouse)
    assert sorted(str(r["event_id"]) for r in rows) == sorted([*accepted, answer.json()["eventId"]])


async def test_one_check_spends_both_budgets_in_order(redis: Redis) -> None:
    """Requests are checked before events; a request the event budget refuses still counts
    as a request; a check of 0 events (a body that did not decode) spends requests only;
    each budget keeps its own window."""
    limiter = RateLimiter(redis, (3, "minute"), (250, "hour"))
    client = f"test-{uuid.uuid4().hex}"
    assert await limiter.check(client, events=100) is None
    assert await limiter.check(client, events=100) is None
    refused = await limiter.check(client, events=100)  # 300 events > 250
    assert refused is not None and refused.budget is Budget.EVENTS
    assert 1 <= refused.seconds <= 3600
    again = await limiter.check(client, events=0)  # the 4th request: over 3 a minute
    assert again is not None and again.budget is Budget.REQUESTS
    assert 1 <= again.seconds <= 60
    # Concurrent checks are answered by shared round trips, exactly.
    other = f"test-{uuid.uuid4().hex}"
    answers = await asyncio.gather(*(limiter.check(other, events=60) for _ in range(6)))
    assert [a.budget if a else None for a in answers] == [None] * 3 + [Budget.REQUESTS] * 3
    # Refused as requests, the last three spent no events.
    hour = int(time.time()) // 3600
    assert await redis.get(keys.rate_window(keys.RATE_EVENTS, other, hour)) == b"180"


async def test_a_burst_of_several_clients_is_decided_per_client_in_arrival_order(
    redis: Redis,
) -> None:
    """One round trip answers requests of several clients, interleaved: each client's budgets
    are spent in its own arrival order and written once, exactly what it was allowed."""
    limiter = RateLimiter(redis, (3, "minute"), (100, "hour"))
    a, b = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    burst = [(a, 10), (b, 60), (a, 10), (b, 60), (a, 10), (b, 0), (a, 10), (b, 30)]
    if time.time() % 60 > 58:  # the windows read below must be the ones the burst spent
        await asyncio.sleep(2.5)
    answers = await asyncio.gather(*(limiter.check(client, events=n) for client, n in burst))
    decided = [answer.budget if answer else None for answer in answers]
    # a: three requests fit, the fourth is over 3 a minute; b: 60 events fit, the next 60
    # would be 120 > 100 (refused, still a request), the check of 0 events is its 3rd request,
    # the 4th is over 3 a minute.
    assert decided == [
        None,
        None,
        None,
        Budget.EVENTS,
        None,
        None,
        Budget.REQUESTS,
        Budget.REQUESTS,
    ]
    minute, hour = int(time.time()) // 60, int(time.time()) // 3600
    assert await redis.get(keys.rate_window(keys.RATE_REQUESTS, a, minute)) == b"3"
    assert await redis.get(keys.rate_window(keys.RATE_REQUESTS, b, minute)) == b"3"
    assert await redis.get(keys.rate_window(keys.RATE_EVENTS, a, hour)) == b"30"
    assert await redis.get(keys.rate_window(keys.RATE_EVENTS, b, hour)) == b"60"
    assert 0 < await redis.pttl(keys.rate_window(keys.RATE_EVENTS, b, hour)) <= 2 * 3600 * 1000
