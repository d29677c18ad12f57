"""Erasure of a user's data (materialized/erasure.py): every table, archived day and Redis key
that held the user or their sessions holds nothing of them afterwards, every rollup equals the
one a fresh database builds from the data that remains (archived and purged days included),
the stats equal the oracle's over what remains; a run cut short resumes without counting
twice; rows arriving meanwhile are erased too; the API audits with a keyed hash only."""

import uuid
import zoneinfo
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from arq.connections import ArqRedis

from cli.demo_traffic import Traffic, generate
from core import keys
from core.clickhouse import Warehouse
from core.settings import Settings
from core.storage import FileStorage, Storage
from materialized import archive, rollup_rebuild, session_hours
from materialized.erasure import (
    KEYED,
    UNIDENTIFIED_VIEWS,
    Erasure,
    ErasureStatus,
    ErasureStore,
    Record,
    user_hash,
)
from materialized.stats import Stats
from tests import oracle
from tests.conftest import AUDIT_KEY, DOWNLOAD_KEY, Running, event, wait_for
from tests.test_dashboard_api import bearer, token
from tracked.retry_queue import RetryQueue

LONDON = zoneinfo.ZoneInfo("Europe/London")
START = datetime(2026, 3, 20, tzinfo=UTC)
DAYS = 8
LATER = datetime(2027, 1, 1, tzinfo=UTC)  # every hour of the traffic has ended by then


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(START, DAYS, 60, seed=61)


def busiest(traffic: Traffic) -> uuid.UUID:
    """The customer with the most sessions and some orders."""
    ordering = {d.customer_id for d in traffic.domain if d.event_type == "order-created"}
    sessions = Counter(
        r.user_id for r in {(r.user_id, r.session_id): r for r in traffic.tracking}.values()
    )
    return max((u for u in sessions if u in ordering), key=lambda u: sessions[u])


def days_of(traffic: Traffic, user: uuid.UUID) -> list[date]:
    sessions = {r.session_id for r in traffic.tracking if r.user_id == user}
    return sorted({r.received_at.date() for r in traffic.tracking if r.session_id in sessions})


def without(traffic: Traffic, user: uuid.UUID) -> Traffic:
    sessions = {r.session_id for r in traffic.tracking if r.user_id == user}
    return Traffic(
        [r for r in traffic.tracking if r.user_id != user and r.session_id not in sessions],
        [d for d in traffic.domain if d.customer_id != user],
    )


# Each table as a list of rows that does not depend on how rows were split or merged.
CONTENTS = {
    "tracking_events_hourly": "SELECT hour, event_type, sum(events) FROM {t} GROUP BY ALL",
    "blog_views_hourly": "SELECT hour, path, sum(views) FROM {t} GROUP BY ALL",
    "product_views_hourly": "SELECT hour, product_id, sum(views) FROM {t} GROUP BY ALL",
    "stats_hourly": "SELECT dimension, hour, value, sum(pageviews),"
    " uniqCombined64Merge(12)(visitors) FROM {t} GROUP BY ALL",
    "stats_daily": "SELECT dimension, day, value, sum(pageviews),"
    " uniqCombined64Merge(12)(visitors) FROM {t} GROUP BY ALL",
    "domain_events_hourly": "SELECT hour, event_type, currency, sum(events), sum(amount)"
    " FROM {t} GROUP BY ALL HAVING sum(events) > 0",
    "stats_sessions": "SELECT start_hour, session_id, min(first_at), max(last_at),"
    " sum(pageviews), sum(events) FROM {t} GROUP BY ALL",
    "stats_visits": "SELECT hour, session_id, visitor, started, country, landing_page,"
    " sum(pageviews), sum(events) FROM {t} GROUP BY ALL",
    "stats_pages": "SELECT hour, session_id, visitor, path, event_type, sum(pageviews),"
    " sum(events) FROM {t} GROUP BY ALL",
    "customer_orders_hourly": "SELECT hour, customer_id, sum(orders) FROM {t} GROUP BY ALL",
    "customer_first_order": "SELECT customer_id, minMerge(first_order) FROM {t} GROUP BY ALL",
    "analytics_events": "SELECT count(), sum(toUInt128(event_id)) FROM {t} FINAL",
}


async def contents(warehouse: Warehouse, table: str, sql: str) -> list[Any]:
    return sorted(map(tuple, await warehouse.rows(f"{sql.format(t=table)} ORDER BY ALL")))


def erasure_of(warehouse: Warehouse, storage: Storage, redis: ArqRedis, user: uuid.UUID) -> Erasure:
    record = Record(
        erasure_id=uuid.uuid4(),
        user_hash=user_hash(AUDIT_KEY.encode(), user),
        requested_by="test",
        requested_at=datetime.now(UTC),
    )
    return Erasure(warehouse, storage, redis, RetryQueue(redis), LONDON, record, user)


async def archived(
    warehouse: Warehouse, storage: Storage, first: date, second: date
) -> tuple[date, date]:
    """Two days archived, the first purged from ClickHouse as past retention."""
    for day in (first, second):
        await archive.archive_day(warehouse, storage, day)
    assert await archive.purge(warehouse, storage, first + timedelta(days=91)) == [first]
    return first, second


async def test_an_erasure_leaves_what_a_fresh_load_of_the_rest_would_build(
    warehouse: Warehouse,
    fresh: Warehouse,
    redis: ArqRedis,
    traffic: Traffic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = busiest(traffic)
    await oracle.load_past(warehouse, traffic)
    # Sealed session hours that count the user's sessions (no insert is in flight here).
    monkeypatch.setattr(session_hours, "IN_FLIGHT_SECONDS", 0)
    assert await session_hours.seal(warehouse) > 0
    kept = "SELECT count() FROM stats_session_journeys WHERE visitor = {user:UUID}"
    assert await warehouse.scalar(kept, {"user": user}) > 0  # their sessions' journeys
    storage = FileStorage(tmp_path / "objects", DOWNLOAD_KEY.encode(), "")
    purged, hot = await archived(warehouse, storage, *days_of(traffic, user)[:2])
    sessions = {r.session_id for r in traffic.tracking if r.user_id == user}
    assert len(sessions) > 3
    await redis.set(keys.visitor(user.bytes), b"x")
    await redis.set(keys.session(min(sessions).bytes), b"x")
    await redis.set(keys.stats_cache("some-answer"), b"{}")

    erasure = erasure_of(warehouse, storage, redis, user)
    assert await erasure.run(LATER) is None
    record = await ErasureStore(warehouse).get(erasure.record.erasure_id)
    assert record is not None and record.status is ErasureStatus.DONE
    assert record.progress.sessions == []  # no session id outlives the erasure

    rest = without(traffic, user)
    erased = [r for r in traffic.tracking if r.session_id in sessions or r.user_id == user]
    hot_erased = [r for r in erased if r.received_at.date() != purged]
    archived_erased = [r for r in erased if r.received_at.date() in (purged, hot)]
    orders = [d for d in traffic.domain if d.customer_id == user]
    assert record.removed["tracking_events"] == len(hot_erased)
    assert record.removed["analytics_events"] == len(orders)
    assert record.removed["archive"] == len(archived_erased)
    assert record.removed["redis"] == 2
    assert not await redis.exists(keys.stats_cache("some-answer"))

    # Nothing of the user is left in any table that held them.
    parameters = {"user": user, "sessions": sorted(sessions)}
    for table, condition in KEYED.items():
        assert (
            await warehouse.scalar(f"SELECT count() FROM {table} WHERE {condition}", parameters)
            == 0
        ), table

    # Every rollup is what the remaining data builds from scratch, purged day included.
    await oracle.load_past(fresh, rest)
    for table, sql in CONTENTS.items():
        assert await contents(warehouse, table, sql) == await contents(fresh, table, sql), table
    # The funnels' copy holds what the raw events still do: none of theirs, no purged day.
    copy = await warehouse.rows(
        "SELECT event_id, sample, visitor, event_type, occurred_at FROM visitor_events"
        " ORDER BY event_id"
    )
    assert copy == await warehouse.rows(
        "SELECT event_id, toUInt8(cityHash64(ifNull(user_id, session_id)) % 256),"
        " ifNull(user_id, session_id), event_type, occurred_at FROM tracking_events"
        " WHERE NOT is_bot ORDER BY event_id"
    )
    # The archived days hold exactly the remaining rows, verified and logged so.
    for day in (purged, hot):
        kept = archive.file_fingerprint(await storage.read(archive.object_key(day)))
        assert kept == await archive.fingerprint(fresh, day)
        assert (await archive.logged(warehouse))[day] == kept
    assert await archive.fingerprint(warehouse, hot) == await archive.fingerprint(fresh, hot)
    # The purge that follows sees the rewritten hot day as verified.
    assert await archive.purge(warehouse, None, hot + timedelta(days=91)) == [hot]

    # The stats over the days still in ClickHouse equal the oracle's over what remains.
    stats = Stats(warehouse, LONDON)
    start, end = datetime.combine(hot + timedelta(days=1), datetime.min.time(), UTC), LATER
    overview = msgspec.to_builtins(await stats.period(start, end, {}))
    expected = oracle.stats_period(rest, start, end, {})
    assert {k: overview[k] for k in expected} == expected
    # A long range's sessions read no sealed hour still counting the user's.
    long_range = await Stats(warehouse, LONDON, exact_max_events=0).period(start, end, {})
    assert (long_range.sessions, long_range.bounce_rate) == (
        expected["sessions"],
        expected["bounceRate"],
    )


async def test_a_run_cut_short_resumes_and_counts_once(
    warehouse: Warehouse, redis: ArqRedis, traffic: Traffic, tmp_path: Path
) -> None:
    """Storage gone half-way (its objects not where they were): the deletes done are kept,
    the run fails at the archive; run again with storage back, it finishes, each row counted
    once."""
    user = busiest(traffic)
    await oracle.load_past(warehouse, traffic)
    storage = FileStorage(tmp_path / "objects", DOWNLOAD_KEY.encode(), "")
    day = days_of(traffic, user)[0]
    await archive.archive_day(warehouse, storage, day)
    lost = FileStorage(tmp_path / "elsewhere", DOWNLOAD_KEY.encode(), "")
    erasure = erasure_of(warehouse, lost, redis, user)
    with pytest.raises(FileNotFoundError):
        await erasure.run(LATER)
    stopped = await ErasureStore(warehouse).get(erasure.record.erasure_id)
    assert stopped is not None and stopped.status is ErasureStatus.RUNNING
    assert "delete:tracking_events" in stopped.progress.done
    assert "archive" not in stopped.progress.done
    resumed = Erasure(warehouse, storage, redis, RetryQueue(redis), LONDON, stopped, user)
    assert await resumed.run(LATER) is None
    done = await ErasureStore(warehouse).get(erasure.record.erasure_id)
    assert done is not None and done.status is ErasureStatus.DONE
    erased = {r.session_id for r in traffic.tracking if r.user_id == user}
    rows = [r for r in traffic.tracking if r.session_id in erased or r.user_id == user]
    assert done.removed["tracking_events"] == len(rows)
    assert done.removed["archive"] == sum(1 for r in rows if r.received_at.date() == day)
    assert done.removed["analytics_events"] == sum(
        1 for d in traffic.domain if d.customer_id == user
    )


async def test_rows_arriving_during_the_erasure_are_erased_and_the_hour_rebuilt_once_ended(
    server: Running, warehouse: Warehouse, redis: ArqRedis
) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()

    async def send(n: int) -> None:
        beacons = [event(sessionId=str(session), userId=str(user)) for _ in range(n)]
        beacons += [event() for _ in range(3)]  # somebody else
        assert (await server.http.post("/v1/analytics/track", json=beacons)).status_code == 202
        await server.drain()

    await send(4)
    storage = server.services.runtime.storage
    erasure = erasure_of(warehouse, storage, redis, user)
    now = datetime.now(UTC)
    wait = await erasure.run(now)
    assert wait is not None and wait > now  # this hour is still being written
    assert erasure.record.status is ErasureStatus.RUNNING
    await send(2)  # the user again, while the erasure waits for the hour to end
    assert await erasure.run(wait) is None
    assert erasure.record.status is ErasureStatus.DONE
    assert erasure.record.removed["tracking_events"] == 6
    assert erasure.record.progress.passes == 2
    left = await warehouse.scalar(
        "SELECT count() FROM tracking_events WHERE user_id = {u:UUID}", {"u": user}
    )
    assert left == 0
    # The hour's rollup counts what the raw events hold now: the others' six events.
    hour = now.replace(minute=0, second=0, microsecond=0)
    counted = await warehouse.scalar(
        "SELECT sum(events) FROM tracking_events_hourly WHERE hour = {h:DateTime('UTC')}",
        {"h": hour},
    )
    raw = await warehouse.scalar(
        "SELECT count() FROM tracking_events WHERE toStartOfHour(received_at)"
        " = {h:DateTime('UTC')} AND NOT is_bot",
        {"h": hour},
    )
    assert counted == raw == 6


async def test_every_view_over_the_users_rows_is_cleaned_or_rebuilt(warehouse: Warehouse) -> None:
    """A new materialized view over the raw or domain events must be named in the erasure:
    deleted by key or rebuilt by hour."""
    rows = await warehouse.rows(
        "SELECT name, dependencies_table FROM system.tables WHERE database = currentDatabase()"
        " AND name IN ('tracking_events', 'analytics_events')"
    )
    views = {view for _, dependants in rows for view in dependants}
    rebuilt = set(rollup_rebuild.TRACKING_ROLLUPS + rollup_rebuild.DOMAIN_ROLLUPS)
    keyed = {f"{table}_mv" for table in KEYED}
    assert views - rebuilt - keyed - set(UNIDENTIFIED_VIEWS) == set()


def admin() -> dict[str, str]:
    return bearer(token())


async def test_without_an_audit_key_erasures_are_refused_naming_it(
    make_server: Any, settings: Settings
) -> None:
    server: Running = await make_server(msgspec.structs.replace(settings, erasure_audit_key=""))
    resp = await server.http.post(ERASURES, json={"userId": str(uuid.uuid4())}, headers=admin())
    assert resp.status_code == 503 and "ERASURE_AUDIT_KEY" in resp.json()["error"]


ERASURES = "/v1/analytics/erasures"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "$"),
        ({"userId": "not-a-uuid"}, "$.userId"),
        ({"userId": str(uuid.uuid4()), "extra": 1}, "$"),
    ],
)
async def test_a_bad_request_is_a_400_naming_the_field(
    server: Running, body: dict[str, Any], path: str
) -> None:
    resp = await server.http.post(ERASURES, json=body, headers=admin())
    assert resp.status_code == 400, resp.text
    assert resp.json()["path"] == path


async def test_the_api_erases_and_audits_with_a_keyed_hash_only(
    server: Running, warehouse: Warehouse, traffic: Traffic
) -> None:
    user = busiest(traffic)
    await oracle.load_past(warehouse, traffic)
    body = {"userId": str(user)}
    assert (await server.http.post(ERASURES, json=body)).status_code == 401
    assert (
        await server.http.post(ERASURES, json=body, headers=bearer(token("CUSTOMER")))
    ).status_code == 403
    resp = await server.http.post(ERASURES, json=body, headers=admin())
    assert resp.status_code == 202, resp.text
    erasure_id = resp.json()["erasureId"]

    async def done() -> bool:
        state = await server.http.get(f"{ERASURES}/{erasure_id}", headers=admin())
        return state.status_code == 200 and state.json()["status"] == "DONE"

    await wait_for(done, within=60)
    state = (await server.http.get(f"{ERASURES}/{erasure_id}", headers=admin())).json()
    assert state["removed"]["tracking_events"] > 0 and state["removed"]["analytics_events"] > 0
    assert state["startedAt"] <= state["finishedAt"]
    left = await warehouse.scalar(
        "SELECT count() FROM tracking_events WHERE user_id = {u:UUID}", {"u": user}
    )
    assert left == 0
    # The audit: who and when, the user only as HMAC-SHA256 under the audit key.
    audit = await warehouse.rows("SELECT user_hash, requested_by, progress FROM erasures FINAL")
    assert audit[0][0] == user_hash(AUDIT_KEY.encode(), user)
    every = " ".join(str(v) for row in await warehouse.rows("SELECT * FROM erasures") for v in row)
    assert str(user) not in every and user.hex not in every
    assert (await server.http.get(f"{ERASURES}/{uuid.uuid4()}", headers=admin())).status_code == 404
    assert (await server.http.get(f"{ERASURES}/nope", headers=admin())).status_code == 400
