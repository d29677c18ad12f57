"""Retention cohorts and journeys (materialized/retention.py, materialized/journeys.py): equal
to the plain-Python oracle over weeks that hold the UK clock changes, on ranges cut anywhere,
with repeated pages and events stored out of order; the API refuses bad parameters by name."""

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from cli.demo_traffic import Traffic, generate
from core.clickhouse import Warehouse
from materialized import journeys, retention, session_hours
from materialized.retention import CohortBy
from tests import oracle
from tests.conftest import Running, tracking_rows
from tests.test_dashboard_api import bearer, token

LONDON = zoneinfo.ZoneInfo("Europe/London")


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    """Six weeks around each UK clock change of 2026 (29 March, 25 October)."""
    spring = generate(datetime(2026, 3, 2, tzinfo=UTC), 42, 30, seed=51)
    autumn = generate(datetime(2026, 10, 5, tzinfo=UTC), 35, 30, seed=52)
    return Traffic(spring.tracking + autumn.tracking, spring.domain + autumn.domain)


RANGES = [
    (oracle.as_utc("2026-03-02", LONDON), oracle.as_utc("2026-04-13", LONDON)),
    (oracle.as_utc("2026-10-05", LONDON), oracle.as_utc("2026-11-09", LONDON)),
    # Cut mid-week and mid-hour: the raw events answer the partial hours at both ends.
    (datetime(2026, 3, 4, 13, 17, tzinfo=UTC), datetime(2026, 3, 31, 22, 41, 5, tzinfo=UTC)),
    (datetime(2026, 10, 21, 9, 30, tzinfo=UTC), datetime(2026, 10, 21, 9, 50, tzinfo=UTC)),
]


async def test_cohorts_agree_with_the_oracle_across_the_clock_changes(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    for start, end in RANGES:
        for by in CohortBy:
            for weeks in (retention.DEFAULT_WEEKS, 2):
                got = await retention.cohorts(warehouse, LONDON, by, start, end, weeks)
                expected = oracle.retention(traffic, by.value, start, end, LONDON, weeks)
                assert msgspec.to_builtins(got) == expected, (start, by, weeks)
    spring = msgspec.to_builtins(
        await retention.cohorts(warehouse, LONDON, CohortBy.VISIT, *RANGES[0])
    )
    assert [c["week"] for c in spring["cohorts"]][3:5] == ["2026-03-23", "2026-03-30"]
    assert [len(c["returning"]) for c in spring["cohorts"]] == [5, 4, 3, 2, 1, 0]
    assert all(c["size"] > 0 for c in spring["cohorts"])
    assert spring["cohorts"][0]["returning"][0] > 0
    orders = msgspec.to_builtins(
        await retention.cohorts(warehouse, LONDON, CohortBy.ORDER, *RANGES[0])
    )
    assert sum(c["size"] for c in orders["cohorts"]) > 0
    assert sum(sum(c["returning"]) for c in orders["cohorts"]) > 0


async def test_a_week_is_cut_at_london_midnight_on_monday(warehouse: Warehouse) -> None:
    """Sunday 23:30 and Monday 00:30 London time are two weeks, in BST and in GMT."""
    at = [  # UTC instants: 29 March is the first BST day; 26 October the first GMT Monday
        datetime(2026, 3, 29, 22, 30, tzinfo=UTC),  # Sunday 23:30 BST
        datetime(2026, 3, 29, 23, 30, tzinfo=UTC),  # Monday 00:30 BST
        datetime(2026, 10, 25, 23, 30, tzinfo=UTC),  # Sunday 23:30 GMT
        datetime(2026, 10, 26, 0, 30, tzinfo=UTC),  # Monday 00:30 GMT
    ]
    visitor = uuid.uuid4()
    rows = [
        msgspec.structs.replace(
            r, user_id=visitor, received_at=t, occurred_at=t, session_started_at=t
        )
        for r, t in zip(tracking_rows(4), at, strict=True)
    ]
    traffic = Traffic(rows, [])
    await oracle.load_past(warehouse, traffic)
    for start, end in [
        (oracle.as_utc("2026-03-23", LONDON), oracle.as_utc("2026-04-06", LONDON)),
        (oracle.as_utc("2026-10-19", LONDON), oracle.as_utc("2026-11-02", LONDON)),
    ]:
        got = msgspec.to_builtins(
            await retention.cohorts(warehouse, LONDON, CohortBy.VISIT, start, end)
        )
        assert got == oracle.retention(traffic, "visit", start, end, LONDON, 8)
        assert [(c["size"], c["returning"]) for c in got["cohorts"]] == [(1, [1]), (0, [])]


async def test_journeys_agree_with_the_oracle(
    warehouse: Warehouse, traffic: Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    await oracle.load_past(warehouse, traffic)
    asked: list[dict[str, Any]] = [
        {"entry": "/"},
        {"entry": "/kitchens", "steps": 5},
        {"entry": "/bedrooms", "steps": 1},
        {"entry": "/nowhere"},
        {"goal": "BOOKING_COMPLETE"},
        {"goal": "BROCHURE_REQUEST", "steps": 5, "limit": 3},
        {"goal": "ADD_TO_WISHLIST", "steps": 2},
    ]
    expected = {
        (n, k): oracle.journeys(traffic, start, end, **question)
        for n, (start, end) in enumerate(RANGES[:3])
        for k, question in enumerate(asked)
    }

    async def assert_oracle_answers() -> None:
        for n, (start, end) in enumerate(RANGES[:3]):
            for k, question in enumerate(asked):
                got = await journeys.journeys(warehouse, start, end, **question)
                assert msgspec.to_builtins(got)["paths"] == expected[n, k], (start, question)

    await assert_oracle_answers()  # from the raw events: no hour sealed yet
    monkeypatch.setattr(session_hours, "IN_FLIGHT_SECONDS", 0)
    while await session_hours.seal(warehouse):  # a run seals a month of hours at most
        pass
    for start, end in RANGES[:3]:  # every hour with sessions sealed, journeys and all
        with_sessions = await warehouse.scalar(
            "SELECT uniqExact(start_hour) FROM stats_sessions"
            " WHERE start_hour >= {start:DateTime('UTC')} AND start_hour < {end:DateTime('UTC')}",
            {"start": start, "end": end},
        )
        sealed = await session_hours.sealed(warehouse, start, end, session_hours.Rows.JOURNEYS)
        assert len(sealed) >= with_sessions - 2  # all but the hours the range cuts
    await assert_oracle_answers()  # the sealed hours from their sessions' rows, the cut ones raw
    top = await journeys.journeys(warehouse, *RANGES[0], entry="/kitchens", steps=5, limit=100)
    assert top.paths[0].visitors > 1
    assert max(len(j.pages) for j in top.paths) == 4  # the demo's visits view 4 pages at most
    # The sealed rows are what answers: without them the sealed hours' sessions are gone.
    await warehouse.command("TRUNCATE TABLE stats_session_journeys")
    for start, end in RANGES[:2]:  # whole London days: every hour with sessions was sealed
        assert (await journeys.journeys(warehouse, start, end, entry="/kitchens")).paths == []


async def test_a_sealed_hour_touched_by_a_late_event_is_read_raw_until_sealed_again(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_hours, "IN_FLIGHT_SECONDS", 0)
    base = datetime(2026, 11, 20, 9, tzinfo=UTC)
    session = uuid.uuid4()
    # The first pageview received a moment before the session's start: another process took
    # it in while the one that started the session was enriching its own batch.
    plan = [
        (0, "PAGEVIEW", "/", timedelta(seconds=-2)),
        (2, "PAGEVIEW", "/kitchens", timedelta(seconds=1)),
        (4, "BOOKING_COMPLETE", "/done", timedelta(seconds=1)),
    ]
    rows = [
        visit(row, session, base, minutes, kind, path, received=received)
        for (minutes, kind, path, received), row in zip(plan, tracking_rows(3), strict=True)
    ]
    await oracle.load_past(warehouse, Traffic(rows, []))
    start, end = base - timedelta(hours=1), base + timedelta(hours=2)
    assert await session_hours.seal(warehouse) > 0
    before = await journeys.journeys(warehouse, start, end, goal="BOOKING_COMPLETE")
    assert msgspec.to_builtins(before)["paths"] == [{"pages": ["/", "/kitchens"], "visitors": 1}]
    # A pageview stored after the seal, earlier in the session (a phone back online), and one
    # past the span a session's events are read for.
    late = [
        visit(row, session, base, minutes, "PAGEVIEW", path, received=received)
        for (minutes, path, received), row in zip(
            [(1, "/bedrooms", timedelta(hours=3)), (3, "/brochure", timedelta(days=1))],
            tracking_rows(2),
            strict=True,
        )
    ]
    await oracle.load_past(warehouse, Traffic(late, []))
    answer = [{"pages": ["/", "/bedrooms", "/kitchens"], "visitors": 1}]
    assert answer == oracle.journeys(Traffic(rows + late, []), start, end, goal="BOOKING_COMPLETE")
    got = await journeys.journeys(warehouse, start, end, goal="BOOKING_COMPLETE")
    assert msgspec.to_builtins(got)["paths"] == answer  # at once, from the raw events
    assert await session_hours.seal(warehouse) > 0
    # One row: the first seal's was deleted once the second was whole.
    assert await warehouse.scalar("SELECT count() FROM stats_session_journeys") == 1
    got = await journeys.journeys(warehouse, start, end, goal="BOOKING_COMPLETE")
    assert msgspec.to_builtins(got)["paths"] == answer  # sealed again


def visit(
    row: Any,
    session: uuid.UUID,
    base: datetime,
    minutes: int,
    kind: str,
    path: str,
    received: timedelta = timedelta(seconds=1),
) -> Any:
    """`row` as an event of `session` (started at `base`) `minutes` after it, received
    `received` after it happened."""
    at = base + timedelta(minutes=minutes)
    return msgspec.structs.replace(
        row,
        session_id=session,
        user_id=None,
        is_bot=False,
        event_type=kind,
        url=f"https://www.lomashwood.co.uk{path}",
        landing_page="https://www.lomashwood.co.uk/",
        occurred_at=at,
        received_at=at + received,
        session_started_at=base,
    )


async def test_journeys_collapse_repeats_and_follow_time_not_storage(
    warehouse: Warehouse,
) -> None:
    base = datetime(2026, 11, 20, 9, tzinfo=UTC)
    session, visitor = uuid.uuid4(), uuid.uuid4()
    plan = [  # (minutes after base, event type, path, user) in the order they are stored
        (9, "PAGEVIEW", "/brochure", visitor),
        (0, "PAGEVIEW", "/", None),
        (1, "PAGEVIEW", "/", None),  # a reload of the entry page
        (2, "PAGEVIEW", "/kitchens", None),
        (3, "PAGEVIEW", "/kitchens", None),
        (4, "PAGEVIEW", "/kitchens/shaker-oak", None),
        (5, "PAGEVIEW", "/kitchens", None),  # back again: a step
        (6, "BOOKING_COMPLETE", "/book-appointment/done", None),
        (8, "BOOKING_COMPLETE", "/book-appointment/done", None),  # the second goal: ignored
    ]
    rows = []
    for (minutes, kind, path, user), row in zip(plan, tracking_rows(len(plan)), strict=True):
        at = base + timedelta(minutes=minutes)
        rows.append(
            msgspec.structs.replace(
                row,
                session_id=session,
                user_id=user,
                event_type=kind,
                url=f"https://www.lomashwood.co.uk{path}",
                landing_page="https://www.lomashwood.co.uk/?utm_source=news",
                occurred_at=at,
                received_at=at + timedelta(seconds=1),
                session_started_at=base,
            )
        )
    traffic = Traffic(rows, [])
    await oracle.load_past(warehouse, traffic)
    start, end = base - timedelta(hours=1), base + timedelta(hours=1)
    after = await journeys.journeys(warehouse, start, end, entry="/", steps=5)
    assert msgspec.to_builtins(after)["paths"] == [
        {
            "pages": ["/kitchens", "/kitchens/shaker-oak", "/kitchens", "/brochure"],
            "visitors": 1,
        }
    ]
    before = await journeys.journeys(warehouse, start, end, goal="BOOKING_COMPLETE", steps=3)
    assert msgspec.to_builtins(before)["paths"] == [
        {"pages": ["/kitchens", "/kitchens/shaker-oak", "/kitchens"], "visitors": 1}
    ]
    for question in [{"entry": "/", "steps": 5}, {"goal": "BOOKING_COMPLETE", "steps": 3}]:
        got = await journeys.journeys(warehouse, start, end, **question)  # type: ignore[arg-type]
        assert msgspec.to_builtins(got)["paths"] == oracle.journeys(
            traffic,
            start,
            end,
            **question,  # type: ignore[arg-type]
        )
    # A session that started before the range is not one of its journeys.
    late = await journeys.journeys(warehouse, base + timedelta(minutes=1), end, entry="/")
    assert late.paths == []


def admin() -> dict[str, str]:
    return bearer(token())


RETENTION = "/v1/analytics/stats/retention"
JOURNEYS = "/v1/analytics/stats/journeys"
SPRING = {"from": "2026-03-02T00:00:00", "to": "2026-04-13T00:00:00"}


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        (RETENTION, SPRING, "by"),
        (RETENTION, {**SPRING, "by": "session"}, "by"),
        (RETENTION, {**SPRING, "by": "visit", "weeks": "0"}, "weeks"),
        (RETENTION, {**SPRING, "by": "visit", "weeks": "53"}, "weeks"),
        (RETENTION, {"by": "visit", "to": "2026-04-13"}, "from"),
        (JOURNEYS, SPRING, "entry"),
        (JOURNEYS, {**SPRING, "entry": "/", "goal": "BOOKING_COMPLETE"}, "entry"),
        (JOURNEYS, {**SPRING, "entry": "kitchens"}, "entry"),
        (JOURNEYS, {**SPRING, "entry": "/" + "x" * 512}, "entry"),
        (JOURNEYS, {**SPRING, "goal": "SIGNUP"}, "goal"),
        (JOURNEYS, {**SPRING, "goal": "PAGEVIEW"}, "goal"),
        (JOURNEYS, {**SPRING, "entry": "/", "steps": "6"}, "steps"),
        (JOURNEYS, {**SPRING, "entry": "/", "limit": "101"}, "limit"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    server: Running, path: str, params: dict[str, str], parameter: str
) -> None:
    resp = await server.http.get(path, params=params, headers=admin())
    assert resp.status_code == 400, resp.text
    assert resp.json()["parameter"] == parameter, resp.json()


async def test_the_api_answers_as_the_oracle(
    server: Running, warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    start, end = RANGES[0]
    assert (await server.http.get(RETENTION, params={**SPRING, "by": "visit"})).status_code == 401
    for by in ("visit", "order"):
        resp = await server.http.get(
            RETENTION, params={**SPRING, "by": by, "weeks": "3"}, headers=admin()
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == oracle.retention(traffic, by, start, end, LONDON, 3)
    resp = await server.http.get(
        JOURNEYS, params={**SPRING, "goal": "BOOKING_COMPLETE", "steps": "4"}, headers=admin()
    )
    assert resp.status_code == 200, resp.text
    expected = oracle.journeys(traffic, start, end, goal="BOOKING_COMPLETE", steps=4)
    assert resp.json() == {"paths": expected} and expected
    cached = await server.http.get(
        JOURNEYS, params={**SPRING, "goal": "BOOKING_COMPLETE", "steps": "4"}, headers=admin()
    )
    assert cached.headers["X-Cache"] == "HIT" and cached.json() == resp.json()


def test_the_raw_hours_are_read_in_as_few_spans_as_cover_their_sessions() -> None:
    """Hours whose sessions' events can overlap share one span of the raw events, so a long
    range with many unsealed hours (sparse traffic, a seal behind) stays one short query."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    every_other = [base + timedelta(hours=2 * n) for n in range(400 * 12)]  # 400 days
    assert journeys._windows(every_other) == [
        (base - timedelta(hours=1), every_other[-1] + timedelta(hours=1, days=1))
    ]
    apart = [base, base + timedelta(days=3)]
    assert journeys._windows(apart) == [
        (base - timedelta(hours=1), base + timedelta(hours=1, days=1)),
        (apart[1] - timedelta(hours=1), apart[1] + timedelta(hours=1, days=1)),
    ]
