"""Attacks, counted event by event: the same rows as the fault table (tests/test_faults.py).

Replayed eventIds, forged X-Forwarded-For floods against the rate limit, hostile bodies,
forged download links, a client's own X-Forwarded-For line, sessions with long URLs, long
unique user agents, and a tracking log left under a live PID.
Each test checks what was stored and records its row for the table printed at the end."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import stat
import string
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from core.clickhouse import Warehouse
from core.settings import Settings
from core.storage import FileStorage
from ingest.enrich import Context, enrich
from ingest.schema import TrackingEvent
from ingest.sessions import DEDUP_TTL_S, SESSION_TTL_S, VISITOR_TTL_S
from ingest.useragent import CACHE_BYTES, MAX_LENGTH, cache_size, parse_agent
from tests.conftest import DOWNLOAD_KEY, Outcome, Running, encode, event, rsa_key_pair, stored_ids
from tests.hostile import HOSTILE
from tests.load import LoadResult

TRACK = "/v1/analytics/track"


def answered(sent: int, accepted: list[str], refused: int) -> LoadResult:
    """What a sequential attacker saw: every request answered, 202 or 4xx."""
    return LoadResult(sent, accepted, {"202": len(accepted), "4xx": refused}, 0, 0, 0.0)


async def flood(
    server: Running, requests: int, headers: Callable[[int], list[tuple[str, str]]]
) -> tuple[list[str], int]:
    """`requests` single events, 30 at a time, request i with `headers(i)`: the accepted
    eventIds and how many were refused with 429. The writer is drained afterwards."""
    accepted: list[str] = []
    refused = 0
    for start in range(0, requests, 30):
        answers = await asyncio.gather(
            *(
                server.http.post(TRACK, json=event(), headers=headers(i))
                for i in range(start, min(start + 30, requests))
            )
        )
        for answer in answers:
            if answer.status_code == 202:
                accepted.append(answer.json()["eventId"])
            else:
                assert answer.status_code == 429
                refused += 1
    await server.drain()
    return accepted, refused


async def test_replaying_accepted_events_stores_each_once(
    server: Running, warehouse: Warehouse, record_outcome: Callable[[Outcome], None]
) -> None:
    batch = [event(eventId=str(uuid.uuid4())) for _ in range(100)]
    accepted: list[str] = []
    for _ in range(4):  # the original and three replays, some overlapping in flight
        answers = await asyncio.gather(
            *(server.http.post(TRACK, json=batch[i : i + 10]) for i in range(0, 100, 10))
        )
        for answer in answers:
            assert answer.status_code == 202
            accepted.extend(answer.json()["eventIds"])
        await server.drain()
    stored = await stored_ids(warehouse)
    result = Outcome.of("same 100 eventIds sent 4 times", 0, answered(400, accepted, 0), stored)
    record_outcome(result)
    assert result.stored == 100 and result.duplicated == 0 and result.lost == 0


async def test_forged_forwarded_for_flood_stays_within_the_limit(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    record_outcome: Callable[[Outcome], None],
) -> None:
    server: Running = await make_server(msgspec.structs.replace(settings, rate_limit="50/minute"))
    accepted: list[str] = []
    refused = 0
    accepted, refused = await flood(
        server, 300, lambda i: [("x-forwarded-for", f"203.0.113.{i % 250}")]
    )
    stored = await stored_ids(warehouse)
    result = Outcome.of(
        "300 requests, forged X-Forwarded-For", 0, answered(300, accepted, refused), stored
    )
    record_outcome(result)
    assert result.accepted == 50 and result.refused == 250
    assert result.stored == 50 and result.lost == 0


async def test_hostile_bodies_store_nothing(
    server: Running, warehouse: Warehouse, record_outcome: Callable[[Outcome], None]
) -> None:
    refused = 0
    for param in HOSTILE:
        (body,) = param.values
        assert isinstance(body, bytes)
        answer = await server.http.post(
            TRACK, content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= answer.status_code < 500, answer.text
        refused += 1
    assert (await server.http.get("/healthz")).status_code == 200
    await server.drain()
    stored = await stored_ids(warehouse)
    sent = answered(len(HOSTILE), [], refused)
    record_outcome(Outcome.of(f"{len(HOSTILE)} hostile bodies", 0, sent, stored))
    assert stored == []


async def test_forged_download_links_are_refused(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    record_outcome: Callable[[Outcome], None],
) -> None:
    _, public = rsa_key_pair()
    server: Running = await make_server(
        msgspec.structs.replace(settings, auth_jwt_public_key=public, auth_jwt_secret="")
    )
    storage = server.services.runtime.storage
    assert isinstance(storage, FileStorage)
    object_key = f"exports/{uuid.uuid4()}.csv"
    storage.path(object_key).parent.mkdir(parents=True)
    storage.path(object_key).write_bytes(b"raw events of a day")
    far = int(time.time()) + 30 * 365 * 86400
    path = f"/v1/analytics/downloads/{object_key}"

    def signed(secret: bytes, expires: int) -> str:
        mac = hmac.new(secret, f"{object_key}\n{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{path}?expires={expires}&signature={mac}"

    # What anyone could compute before: the HMAC key derived from the public key.
    derived = hashlib.sha256(b"lomash-downloads\n" + public.encode()).digest()
    attempts = {
        "key derived from the public JWT key": signed(derived, far),
        "real key, expiry 30 years ahead": signed(DOWNLOAD_KEY.encode(), far),
        "real key, expiry 8 days ahead": signed(
            DOWNLOAD_KEY.encode(), int(time.time()) + 8 * 86400
        ),
        "superscript digit expiry": f"{path}?expires=%C2%B2&signature=00",
        "20-digit expiry": f"{path}?expires={'9' * 20}&signature=00",
        "no signature": f"{path}?expires={int(time.time()) + 60}",
        "a signature for another export": storage.download_url(
            f"exports/{uuid.uuid4()}.csv", datetime.now(UTC) + timedelta(days=1)
        ).replace("/v1/analytics/downloads/exports/", "/v1/analytics/downloads/exports/x"),
    }
    refused = 0
    for name, link in attempts.items():
        answer = await server.http.get(link)
        assert answer.status_code == 403, (name, answer.status_code, answer.text)
        refused += 1
    genuine = storage.download_url(object_key, datetime.now(UTC) + timedelta(days=7))
    assert (await server.http.get(genuine)).content == b"raw events of a day"
    # Storage holds more than exports; none of it has a route, signed or not.
    archived = "archive/tracking_events/date=2026-08-01/part-0.parquet"
    storage.path(archived).parent.mkdir(parents=True)
    storage.path(archived).write_bytes(b"raw events")
    signed_archive = storage.download_url(archived, datetime.now(UTC) + timedelta(days=1))
    assert (await server.http.get(signed_archive)).status_code == 404
    result = Outcome.of(
        f"{len(attempts)} forged download links", 0, answered(len(attempts), [], refused), []
    )
    result.note = "each 403; a genuine 7-day link downloads"
    record_outcome(result)


async def test_a_second_forwarded_for_line_from_the_proxy_is_believed(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    record_outcome: Callable[[Outcome], None],
) -> None:
    # The test client is the proxy (127.0.0.1, trusted). The client sends its own line with a
    # new address each time; the proxy appends a line of its own with the address it saw.
    server: Running = await make_server(
        msgspec.structs.replace(settings, rate_limit="50/minute", trusted_proxies=("127.0.0.1",))
    )
    accepted, refused = await flood(
        server,
        120,
        lambda i: [("x-forwarded-for", f"203.0.113.{i % 250}"), ("x-forwarded-for", "81.2.69.160")],
    )
    stored = await stored_ids(warehouse)
    result = Outcome.of(
        "120 requests, client's own X-Forwarded-For line",
        0,
        answered(120, accepted, refused),
        stored,
    )
    record_outcome(result)
    assert result.accepted == 50 and result.refused == 70 and result.lost == 0
    countries = {r[0] for r in await warehouse.rows("SELECT DISTINCT country FROM tracking_events")}
    assert countries == {"GB"}  # the proxy's address, not the one the client chose


async def test_new_sessions_with_long_urls_cost_bounded_redis_memory(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    redis: Redis,
    record_outcome: Callable[[Outcome], None],
) -> None:
    server: Running = await make_server(settings)
    long = "https://www.lomashwood.co.uk/kitchens?" + "utm_source=" + "s" * 600 + "&x=" + "y" * 800
    accepted: list[str] = []
    sessions = 0
    for _ in range(10):
        batch = [
            event(
                userId=str(uuid.uuid4()),
                metadata={"url": long, "referrer": long, "userAgent": "Mozilla/5.0"},
            )
            for _ in range(20)
        ]
        answer = await server.http.post(TRACK, json=batch)
        assert answer.status_code == 202
        accepted.extend(answer.json()["eventIds"])
        sessions += len(batch)
    await server.drain()
    used = 0
    for pattern in ("lw:s:*", "lw:evt:*", "lw:visitor:*"):
        async for key in redis.scan_iter(pattern):
            used += await redis.memory_usage(key) or 0
    per_session = used / sessions
    lifetimes = {"lw:visitor:*": VISITOR_TTL_S, "lw:s:*": SESSION_TTL_S, "lw:evt:*": DEDUP_TTL_S}
    for pattern, longest in lifetimes.items():
        async for key in redis.scan_iter(pattern):
            assert 0 < await redis.ttl(key) <= longest, pattern
    async for key in redis.scan_iter("lw:s:*"):
        _seq, _first, *values = msgspec.msgpack.decode(await redis.get(key) or b"")
        assert values[:3] == [long[:256], long[:256], "s" * 256], values
    stored = await stored_ids(warehouse)
    result = Outcome.of("200 new sessions, 1.4 KB URLs", 0, answered(sessions, accepted, 0), stored)
    result.note = f"Redis: {per_session:,.0f} bytes per new session (session, event id, visitor)"
    record_outcome(result)
    assert per_session < 1200, per_session  # hashes: 1,544; before any bound: 3,694


async def test_the_event_budget_counts_events_not_requests(
    make_server: Callable[[Settings], Any], settings: Settings
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(settings, rate_limit_events="150/minute")
    )
    first = await server.http.post(TRACK, json=[event() for _ in range(100)])
    assert first.status_code == 202
    second = await server.http.post(TRACK, json=[event() for _ in range(100)])
    assert second.status_code == 429
    assert "event budget 150/minute" in second.json()["error"]
    assert int(second.headers["retry-after"]) >= 1
    third = await server.http.post(TRACK, json=[event() for _ in range(40)])
    assert third.status_code == 202


async def test_long_unique_user_agents_are_cut_and_the_cache_stays_bounded(
    server: Running, warehouse: Warehouse, record_outcome: Callable[[Outcome], None]
) -> None:
    agents = [
        f"Mozilla/5.0 ({i}) " + "".join(random.choices(string.digits, k=4096)) for i in range(15)
    ]
    accepted: list[str] = []
    for agent in agents:  # from the header, as sendBeacon sends it
        beacon = event(metadata={"url": "https://www.lomashwood.co.uk/"})
        answer = await server.http.post(TRACK, json=beacon, headers={"user-agent": agent})
        assert answer.status_code == 202
        accepted.append(answer.json()["eventId"])
    google = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    answer = await server.http.post(
        TRACK, json=event(metadata={"url": "https://x.test/", "userAgent": google})
    )
    accepted.append(answer.json()["eventId"])
    await server.drain()
    lengths = {
        r[0]
        for r in await warehouse.rows(
            "SELECT length(user_agent) FROM tracking_events WHERE NOT is_bot"
        )
    }
    assert lengths == {MAX_LENGTH}
    assert await warehouse.scalar("SELECT countIf(is_bot) FROM tracking_events") == 1
    for i in range(CACHE_BYTES // MAX_LENGTH + 500):  # more distinct agents than the cache holds
        parse_agent(f"{i:08d}" + "a" * (MAX_LENGTH - 8))
    entries, held = cache_size()
    assert held <= CACHE_BYTES
    stored = await stored_ids(warehouse)
    result = Outcome.of("15 distinct 4 KB user agents", 0, answered(16, accepted, 0), stored)
    result.note = (
        f"stored cut to {MAX_LENGTH} chars; parse cache {held:,} bytes in {entries:,} entries"
    )
    record_outcome(result)


def log_directories(root: Path, leftover: Path) -> tuple[list[str], set[int]]:
    """The names of the tracking-log directories besides `leftover`, and their segments' modes."""
    own = [p for p in root.iterdir() if p.is_dir() and p != leftover]
    modes = {stat.S_IMODE(f.stat().st_mode) for d in own for f in d.glob("*.jsonl")}
    return [p.name for p in own], modes


async def test_a_log_left_under_a_live_pid_is_taken_over(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    record_outcome: Callable[[Outcome], None],
) -> None:
    # A container restart: the stopped process was PID 1, and so is the new one. Its log
    # directory's name is a PID that is alive: ours.
    leftover = Path(settings.tracking_log_dir) / str(os.getpid())
    leftover.mkdir(parents=True)
    rows = enrich(
        [msgspec.json.decode(encode(event()), type=TrackingEvent) for _ in range(5)],
        Context(received_at=datetime.now(UTC)),
    )
    (leftover / "00000000000000000001.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(rows))
    server: Running = await make_server(settings)
    answer = await server.http.post(TRACK, json=event())
    assert answer.status_code == 202
    await server.drain()
    stored = await stored_ids(warehouse)
    assert {str(r.event_id) for r in rows} <= set(stored)
    own, modes = log_directories(Path(settings.tracking_log_dir), leftover)
    assert len(own) == 1 and len(own[0]) == 32  # a random boot id, not a PID
    assert modes and modes <= {0o600}
    result = Outcome.of(
        "log left under a live PID", 0, answered(1, [answer.json()["eventId"]], 0), stored
    )
    result.note = f"{len(rows)} leftover events replayed"
    record_outcome(result)
    assert result.stored == len(rows) + 1 and result.duplicated == 0
