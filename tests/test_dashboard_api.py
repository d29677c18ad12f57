"""The admin dashboard API: who may call it, which ranges it takes, its cache, its fallback,
and the jobs that keep funnels and snapshots current."""

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import jwt
import msgspec
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from cli.demo_traffic import default_start, generate, load
from core import keys
from core.clickhouse import Warehouse
from core.jobs import Job
from core.settings import Settings
from materialized import dashboard_cache, snapshots, widgets
from tests.conftest import JWT_SECRET, Running, job_of, rsa_key_pair, take, wait_for
from tests.documented import assert_as_documented
from workers import jobs

DASHBOARD = "/v1/analytics/dashboard"
ADMIN_ID = "5f0c8a4e-2b7d-4c1e-9a3f-6d2e8b1c4a70"  # the admin's user id, the tokens' `sub`


def token(
    role: str = "ADMIN",
    *,
    secret: str = JWT_SECRET,
    expires_in: int = 300,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    now = int(time.time())
    claims = {"sub": ADMIN_ID, "role": role, "iat": now, "exp": now + expires_in}
    claims.update(extra)
    present = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(present, secret, algorithm=algorithm)


def _hs256_by_hand(claims: dict[str, Any], key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(msgspec.json.encode(claims))
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


def metric_value(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def a_day() -> dict[str, str]:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return {"from": (end - timedelta(days=1)).isoformat(), "to": end.isoformat()}


@pytest.fixture
async def demo(warehouse: Warehouse) -> Warehouse:
    await load(warehouse, generate(default_start(days=10), days=10, sessions_per_day=60, seed=3))
    return warehouse


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "missing bearer token"),
        (bearer("not-a-jwt"), 401, "invalid token"),
        (bearer(token(secret="another-secret-0123456789-abcdefghij")), 401, "Signature"),
        (bearer(token(expires_in=-120)), 401, "expired"),  # past the 30 s leeway
        (bearer(token(role="CUSTOMER")), 403, "ADMIN role required"),
        (
            bearer(
                jwt.encode({"role": "ADMIN", "exp": int(time.time()) + 60}, None, algorithm="none")
            ),
            401,
            "invalid token",
        ),
        (bearer(jwt.encode({"role": "ADMIN"}, JWT_SECRET, algorithm="HS256")), 401, "exp"),
        ({"authorization": f"Basic {token()}"}, 401, "missing bearer token"),
    ],
    ids=["none", "garbage", "wrong-key", "expired", "other-role", "alg-none", "no-exp", "basic"],
)
async def test_only_a_valid_admin_token_gets_in(
    server: Running, headers: dict[str, str], status: int, says: str
) -> None:
    response = await server.http.get(DASHBOARD, params=a_day(), headers=headers)
    assert response.status_code == status
    assert says in response.json()["error"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_rs256_public_key(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    key, public = rsa_key_pair()
    server: Running = await make_server(
        msgspec.structs.replace(settings, auth_jwt_public_key=public, auth_jwt_secret="")
    )
    good = token(secret=key, algorithm="RS256")  # type: ignore[arg-type]
    assert (
        await server.http.get(DASHBOARD, params=a_day(), headers=bearer(good))
    ).status_code == 200
    # The classic algorithm swap: HS256 "signed" with the public key's text. Refused.
    forged = _hs256_by_hand({"role": "ADMIN", "exp": int(time.time()) + 60}, public.encode())
    answer = await server.http.get(DASHBOARD, params=a_day(), headers=bearer(forged))
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("claims", "status", "says"),
    [
        ({}, 401, "iss"),  # issuer required when configured
        ({"iss": "https://evil.example"}, 401, "issuer"),
        ({"iss": "https://auth.lomashwood.co.uk", "aud": "shop"}, 401, "Audience"),
        ({"iss": "https://auth.lomashwood.co.uk", "aud": "analytics"}, 200, ""),
        # 20 s past expiry is within the 30 s leeway for clocks that differ; 60 s is not.
        ({"iss": "https://auth.lomashwood.co.uk", "aud": "analytics", "exp": -20}, 200, ""),
        ({"iss": "https://auth.lomashwood.co.uk", "aud": "analytics", "exp": -60}, 401, "expired"),
        # A well-signed token that lives a year is refused: a leak would last that long.
        (
            {"iss": "https://auth.lomashwood.co.uk", "aud": "analytics", "exp": 365 * 86400},
            401,
            "AUTH_JWT_MAX_LIFETIME",
        ),
        (  # without iat, the lifetime is counted from now
            {"iss": "https://auth.lomashwood.co.uk", "aud": "analytics", "exp": 86400, "iat": None},
            401,
            "AUTH_JWT_MAX_LIFETIME",
        ),
    ],
    ids=["no-iss", "wrong-iss", "wrong-aud", "good", "leeway", "expired", "too-long", "no-iat"],
)
async def test_issuer_audience_leeway_and_lifetime_are_checked(
    make_server: Any, settings: Settings, claims: dict[str, Any], status: int, says: str
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(
            settings,
            auth_jwt_issuer="https://auth.lomashwood.co.uk",
            auth_jwt_audience="analytics",
            auth_jwt_max_lifetime=12 * 3600,
        )
    )
    now = int(time.time())
    body: dict[str, Any] = {"sub": "admin", "role": "ADMIN", "iat": now, "exp": now + 300}
    body.update({k: v for k, v in claims.items() if k != "exp"})
    if "exp" in claims:
        body["exp"] = now + claims["exp"]
    if body.get("iat") is None:
        body.pop("iat")
    answer = await server.http.get(
        DASHBOARD, params=a_day(), headers=bearer(jwt.encode(body, JWT_SECRET, algorithm="HS256"))
    )
    assert answer.status_code == status, answer.text
    if says:
        assert says in answer.json()["error"]


async def test_without_a_configured_key_admin_calls_are_refused(
    make_server,
    settings: Settings,  # type: ignore[no-untyped-def]
) -> None:
    server: Running = await make_server(msgspec.structs.replace(settings, auth_jwt_secret=""))
    response = await server.http.get(DASHBOARD, params=a_day(), headers=bearer(token()))
    assert response.status_code == 401
    assert "disabled" in response.json()["error"]


@pytest.mark.parametrize(
    ("params", "parameter", "says"),
    [
        ({"to": "2026-11-01T00:00:00Z"}, "from", "required"),
        ({"from": "yesterday", "to": "2026-11-01T00:00:00Z"}, "from", "not an ISO 8601"),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to", "after"),
        ({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to", "after"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to", "longer than"),
        ({"from": "1066-10-14T00:00:00Z", "to": "1066-10-15T00:00:00Z"}, "from", "between"),
        # Found by schemathesis: a time that cannot be converted to UTC.
        (
            {"from": "0001-01-01T01:00:00+01:05", "to": "0010-01-01T00:00:01+00:01"},
            "from",
            "out of range",
        ),
    ],
)
async def test_bad_ranges_are_400_naming_the_parameter(
    server: Running, params: dict[str, str], parameter: str, says: str
) -> None:
    response = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert says in response.json()["error"]


async def test_dashboard_answers_from_rollups_then_from_cache(
    server: Running, demo: Warehouse, redis: Redis
) -> None:
    params = {"from": "2000-01-01T00:30:00", "to": datetime.now(UTC).isoformat()}
    params["from"] = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    first = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    body = first.json()
    assert body["stale"] is False
    assert datetime.fromisoformat(body["computedAt"]) <= datetime.now(UTC)
    found = body["widgets"]
    assert found["range"]["timezone"] == "Europe/London"
    assert found["bookings"]["inRange"] > 0
    assert found["orders"]["count"] > 0 and found["orders"]["revenue"]["GBP"]
    assert found["topProducts"][0]["views"] >= found["topProducts"][-1]["views"]
    assert sum(found["customers"].values()) > 0
    second = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert second.headers["x-cache"] == "HIT"
    assert second.json() == body
    found = [k async for k in redis.scan_iter("dashboard:snapshot:*")]
    cache_keys = [k for k in found if k != keys.DASHBOARD_CACHE_INDEX.encode()]
    assert len(cache_keys) == 1
    assert 0 < await redis.ttl(cache_keys[0]) <= 300


async def test_an_answer_computed_before_an_invalidation_is_not_cached_after_it(
    server: Running, warehouse: Warehouse, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed, write = asyncio.Event(), asyncio.Event()
    real_compute = widgets.compute

    async def compute_then_wait(*args: Any, **kwargs: Any) -> Any:
        found = await real_compute(*args, **kwargs)
        computed.set()
        await write.wait()  # the answer is read; an order and its invalidation land now
        return found

    monkeypatch.setattr(widgets, "compute", compute_then_wait)
    params = a_day()
    first = asyncio.create_task(server.http.get(DASHBOARD, params=params, headers=bearer(token())))
    await asyncio.wait_for(computed.wait(), 10)
    await dashboard_cache.invalidate(redis)
    write.set()
    assert (await first).headers["x-cache"] == "MISS"
    monkeypatch.setattr(widgets, "compute", real_compute)
    again = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert again.headers["x-cache"] == "MISS"  # recomputed, not the answer from before
    third = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert third.headers["x-cache"] == "HIT"


async def test_only_the_computation_still_registered_writes_the_cache(redis: Redis) -> None:
    now = datetime(2026, 10, 10, 12, tzinfo=UTC)
    start, end = now - timedelta(days=1), now
    other = (now - timedelta(days=40), now - timedelta(days=39))
    key = keys.dashboard_cache(start.isoformat(), end.isoformat())

    before = await dashboard_cache.begin(redis, start, end)
    elsewhere = await dashboard_cache.begin(redis, *other)
    # A late event inside [start, end) drops what was begun for that range, not for the other.
    await dashboard_cache.invalidate(
        redis, dashboard_cache.Changed(within=frozenset({(now - timedelta(hours=2)).timestamp()}))
    )
    assert await dashboard_cache.remember(redis, before, b"old") is False
    assert await redis.get(key) is None
    assert await dashboard_cache.remember(redis, elsewhere, b"kept") is True

    # Two readers of one range: the one that began last owns the entry.
    first = await dashboard_cache.begin(redis, start, end)
    second = await dashboard_cache.begin(redis, start, end)
    assert await dashboard_cache.remember(redis, first, b"first") is False
    assert await dashboard_cache.remember(redis, second, b"second") is True
    assert await redis.get(key) == b"second"
    assert 0 < await redis.ttl(key) <= dashboard_cache.CACHE_SECONDS
    # A cached answer is dropped by the next invalidation, and its entry with it.
    assert await dashboard_cache.invalidate(redis) == 2
    assert await redis.hlen(keys.DASHBOARD_CACHE_INDEX) == 0  # type: ignore[misc]


async def test_naive_times_are_read_in_uk_time_and_rounded_to_hours(server: Running) -> None:
    response = await server.http.get(
        DASHBOARD,
        params={"from": "2026-07-01T00:30:00", "to": "2026-07-02T00:00:00"},
        headers=bearer(token()),
    )
    answer = response.json()["widgets"]["range"]
    # Midnight BST is 23:00 UTC the day before; 00:30 rounds down to 00:00.
    assert answer["from"] == "2026-06-30T23:00:00+00:00"
    assert answer["to"] == "2026-07-01T23:00:00+00:00"


async def test_when_computing_fails_the_newest_snapshot_is_served_stale(
    server: Running, demo: Warehouse
) -> None:
    params = a_day()
    fresh = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    assert fresh.json()["stale"] is False
    await server.services.runtime.redis.flushdb()  # no cached answer left
    await demo.command("DETACH TABLE domain_events_hourly")  # and the rollups break
    try:
        stale = await server.http.get(DASHBOARD, params=params, headers=bearer(token()))
    finally:
        await demo.command("ATTACH TABLE domain_events_hourly")
    assert stale.status_code == 200
    assert stale.headers["x-cache"] == "STALE"
    body = stale.json()
    assert body["stale"] is True
    assert body["ageSeconds"] >= 0
    assert body["widgets"] == fresh.json()["widgets"]


@pytest.fixture
async def announcements(
    listen: Callable[..., Awaitable[aio_pika.abc.AbstractQueue]],
) -> aio_pika.abc.AbstractQueue:
    return await listen(
        "lomash.analytics.funnel.completed",
        "lomash.analytics.dashboard.refreshed",
        "lomash.analytics.alert.raised",
    )


async def messages(queue: aio_pika.abc.AbstractQueue, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The next `n` announcements, each checked against its example in docs/events.md."""
    taken = await take(queue, n)
    for message in taken:
        assert_as_documented(message.routing_key or "", message.body)
    return [(m.routing_key or "", msgspec.json.decode(m.body)) for m in taken]


async def test_admin_can_enqueue_a_rebuild_that_saves_and_announces_snapshots(
    server: Running, demo: Warehouse, announcements: aio_pika.abc.AbstractQueue
) -> None:
    await server.services.runtime.publisher.connected.wait()
    refused = await server.http.post(
        "/v1/admin/jobs/rebuild-dashboards", headers=bearer(token("USER"))
    )
    assert refused.status_code == 403
    response = await server.http.post("/v1/admin/jobs/rebuild-dashboards", headers=bearer(token()))
    assert response.status_code == 202
    job_id = response.json()["jobId"]
    assert job_id

    async def rebuilt() -> bool:
        return bool(
            await demo.scalar("SELECT countIf(label != 'on-demand') FROM dashboard_snapshots") >= 4
        )

    await wait_for(rebuilt, within=20)
    labels = {r[0] for r in await demo.rows("SELECT label FROM dashboard_snapshots")}
    assert {"today", "week", "month", "last-30-days"} <= labels
    refreshed = await messages(announcements, 4)  # one per snapshot row written
    assert {key for key, _ in refreshed} == {"lomash.analytics.dashboard.refreshed"}
    assert {body["eventType"] for _, body in refreshed} == {"dashboard-refreshed"}
    assert [body["payload"]["label"] for _, body in refreshed] == [
        "today",
        "week",
        "month",
        "last-30-days",
    ]
    ids = {str(r[0]) for r in await demo.rows("SELECT snapshot_id FROM dashboard_snapshots")}
    assert {body["payload"]["snapshotId"] for _, body in refreshed} <= ids
    metrics = (await server.http.get("/metrics")).text
    assert "aggregation_job_duration_ms_bucket" in metrics
    assert "dashboard_snapshot_age_minutes" in metrics


async def test_recompute_funnels_writes_and_publishes_each_funnel(
    server: Running, demo: Warehouse, announcements: aio_pika.abc.AbstractQueue, settings: Settings
) -> None:
    await server.services.runtime.publisher.connected.wait()
    ctx = {"job": job_of(server, demo)}
    redis = server.services.runtime.redis
    await redis.set(keys.late_pending(Job.RECOMPUTE_FUNNELS), 1)
    summary = await jobs.recompute_funnels(ctx)
    # the run let go of the pending mark: late events from now on queue the next run
    assert not await redis.exists(keys.late_pending(Job.RECOMPUTE_FUNNELS))
    assert "booking" in summary and "checkout" in summary
    rows = await demo.dicts("SELECT * FROM funnels ORDER BY funnel")
    assert [r["funnel"] for r in rows] == ["booking", "checkout"]
    checkout = rows[1]
    assert checkout["step_names"] == [
        "PRODUCT_VIEW",
        "ADD_TO_WISHLIST",
        "order-created",
        "payment-succeeded",
    ]
    assert rows[0]["step_names"] == ["PAGEVIEW", "BOOKING_START", "BOOKING_COMPLETE"]
    counts = checkout["step_counts"]
    assert counts[0] >= counts[1] >= counts[2] >= counts[3] > 0
    assert checkout["conversion_rate"] == round(counts[3] / counts[0] * 100, 2)
    published = await messages(announcements, 2)
    payloads = {body["payload"]["funnelName"]: body["payload"] for _, body in published}
    assert payloads["CHECKOUT"]["steps"][0] == {"step": "PRODUCT_VIEW", "count": counts[0]}
    assert payloads["CHECKOUT"]["conversionRate"] == checkout["conversion_rate"]
    assert payloads["CHECKOUT"]["funnelId"] == str(checkout["funnel_id"])
    # The dashboard shows the latest result of each funnel.
    dashboard = await server.http.get(DASHBOARD, params=a_day(), headers=bearer(token()))
    conversion = dashboard.json()["widgets"]["conversion"]
    assert conversion["checkout"]["conversionRate"] == checkout["conversion_rate"]


async def test_a_stale_dashboard_raises_one_alert_and_one_recovery(
    server: Running,
    warehouse: Warehouse,
    announcements: aio_pika.abc.AbstractQueue,
    settings: Settings,
    redis: Redis,
) -> None:
    await server.services.runtime.publisher.connected.wait()
    ctx = {"job": job_of(server, warehouse)}
    # Just installed: no rebuild was due yet, so no alert and the metric says why.
    assert (await jobs.check_dashboard_freshness(ctx)).startswith("not yet due")
    assert metric_value("dashboard_snapshot_never_rebuilt") == 1
    assert metric_value("dashboard_snapshot_age_minutes") < 1
    # Installed three hours ago, and the hourly rebuild never ran.
    await warehouse.command(
        "ALTER TABLE schema_migrations UPDATE applied_at = now64(3) - INTERVAL 3 HOUR"
        " WHERE 1 SETTINGS mutations_sync = 1"
    )
    assert await jobs.check_dashboard_freshness(ctx) == "alert raised"
    assert metric_value("dashboard_snapshot_age_minutes") == pytest.approx(180, abs=1)
    assert await jobs.check_dashboard_freshness(ctx) == "still stale: no snapshot"
    await warehouse.command(
        "INSERT INTO dashboard_snapshots (computed_at, range_start, range_end, label, body)"
        " VALUES (now64(3) - INTERVAL 3 HOUR, now64(3), now64(3), 'today', '{}')"
    )
    # Admins viewing the dashboard write on-demand snapshots; they say nothing of the job.
    for _ in range(3):
        answer = await server.http.get(DASHBOARD, params=a_day(), headers=bearer(token()))
        assert answer.status_code == 200
        await dashboard_cache.invalidate(redis)
    assert await server.services.on_demand.flush() == 1
    assert await snapshots.age_minutes(warehouse) == pytest.approx(180, abs=1)
    assert (await jobs.check_dashboard_freshness(ctx)).startswith("still stale: 180")
    await jobs.rebuild_dashboards(ctx)
    assert (await jobs.check_dashboard_freshness(ctx)).startswith("recovered")
    assert (await jobs.check_dashboard_freshness(ctx)).startswith("fresh")
    alerts = await messages(announcements, 6)  # raised, four refreshed, resolved
    raised = [body["payload"] for key, body in alerts if key == "lomash.analytics.alert.raised"]
    assert [(p["alertType"], p["status"]) for p in raised] == [
        ("DASHBOARD_STALE", "RAISED"),
        ("DASHBOARD_STALE", "RESOLVED"),
    ]
    assert raised[0]["snapshotAgeMinutes"] is None
    assert "180 minutes since installation" in raised[0]["message"]
    assert metric_value("dashboard_snapshot_never_rebuilt") == 0
    assert raised[1]["snapshotAgeMinutes"] == 0


async def test_admin_endpoints_are_not_open_to_cross_origin_callers(server: Running) -> None:
    for method, path in (
        ("GET", DASHBOARD),
        ("POST", "/v1/admin/jobs/rebuild-dashboards"),
        ("POST", "/v1/analytics/exports"),
    ):
        answer = await server.http.request(
            method,
            path,
            params=a_day(),
            headers={**bearer(token()), "origin": "https://evil.test"},
        )
        assert "access-control-allow-origin" not in answer.headers, path
        assert "access-control-allow-credentials" not in answer.headers, path
        preflight = await server.http.options(
            path, headers={"origin": "https://evil.test", "access-control-request-method": method}
        )
        assert "access-control-allow-origin" not in preflight.headers, path
