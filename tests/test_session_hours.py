"""Sealed session hours (materialized/session_hours.py): a long range's overview from one row
per sealed hour gives the sessions and bounce rate the sessions' rows give, the median within
its stated bound; a late event or an erasure is counted at once, before any new seal."""

import collections
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from cli.demo_traffic import Traffic, generate
from core.clickhouse import Warehouse, WarehouseError
from materialized import journeys, session_hours
from materialized.dimensions import DIMENSIONS
from materialized.stats import AUDIENCE_DIMENSIONS, Stats
from tests import oracle
from tests.conftest import tracking_rows
from tracked.row import TrackingRow

LONDON = zoneinfo.ZoneInfo("Europe/London")
START = datetime(2026, 10, 20, tzinfo=UTC)
DAYS = 10
END = START + timedelta(days=DAYS)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(START, DAYS, 80, seed=71)


@pytest.fixture(autouse=True)
def no_inserts_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every insert here has landed before the next step: no margin for one in flight, so a
    seal made just after a load counts (in service it waits a minute more)."""
    monkeypatch.setattr(session_hours, "IN_FLIGHT_SECONDS", 0)


def exact(warehouse: Warehouse) -> Stats:
    return Stats(warehouse, LONDON, exact_max_events=10**12)


def pageview(session: uuid.UUID, at: datetime, started: datetime, **fields: Any) -> TrackingRow:
    """A human's pageview of `session` (which started at `started`) received at `at`."""
    return msgspec.structs.replace(
        tracking_rows(1)[0],
        event_id=uuid.uuid4(),
        session_id=session,
        user_id=None,
        event_type="PAGEVIEW",
        received_at=at,
        occurred_at=at,
        session_started_at=started,
        is_bot=False,
        **fields,
    )


def long_range(warehouse: Warehouse) -> Stats:
    """As past EXACT_VISITORS_MAX_EVENTS: the answer a month at scale gets."""
    return Stats(warehouse, LONDON, exact_max_events=0)


async def sealed_count(warehouse: Warehouse) -> int:
    return len(await session_hours.sealed(warehouse, START - timedelta(days=1), END))


def assert_within_bound(
    got: float, traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> None:
    """A sealed median: the exact one (interpolated as it is) with each duration cut to 8
    significant bits, so at most 2^-7 below it and never above (the oracle's is rounded to
    the millisecond)."""
    exact = oracle.stats_period(traffic, start, end, filters)["visitDurationSeconds"]
    assert exact * (1 - 2**-7) - 0.001 <= got <= exact + 0.001


async def test_sealed_hours_give_the_sessions_and_bounces_and_a_median_within_bound(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    # A range that cuts hours at both ends: those hours are never read sealed.
    start, end = START + timedelta(minutes=17), END - timedelta(minutes=43)
    before = await exact(warehouse).period(start, end, {})
    expected = oracle.stats_period(traffic, start, end, {})
    assert (before.sessions, before.bounce_rate) == (expected["sessions"], expected["bounceRate"])
    assert before.visit_duration_exact
    assert await session_hours.seal(warehouse) > DAYS * 20
    assert await session_hours.seal(warehouse) == 0  # nothing touched since
    assert await sealed_count(warehouse) > DAYS * 20
    got = await long_range(warehouse).period(start, end, {})
    assert not got.visit_duration_exact
    assert (got.sessions, got.bounce_rate) == (before.sessions, before.bounce_rate)
    assert_within_bound(got.visit_duration_seconds, traffic, start, end, {})


def commonest(traffic: Traffic, dimension: str) -> str:
    """The value of `dimension` most events of the traffic have: one that matches sessions."""
    values = collections.Counter(oracle.STATS_DIMENSIONS[dimension](r) for r in traffic.tracking)
    return values.most_common(1)[0][0]


async def assert_sealed_and_exact(
    warehouse: Warehouse, traffic: Traffic, filters: dict[str, str]
) -> None:
    """Over a range of whole hours and one cut at both ends: sessions, bounces and pageviews
    equal to the oracle's, visitors too (within a sketch's error under one filter), the median
    read sealed within its bound."""
    for start, end in ((START, END), (START + timedelta(minutes=17), END - timedelta(minutes=43))):
        expected = oracle.stats_period(traffic, start, end, filters)
        got = await long_range(warehouse).period(start, end, filters)
        assert not got.visit_duration_exact, filters
        assert (got.sessions, got.bounce_rate) == (expected["sessions"], expected["bounceRate"])
        assert got.pageviews == expected["pageviews"]
        # A value's sketches or the audiences' (exact at this size).
        if len(filters) == 1 or set(filters) <= AUDIENCE_DIMENSIONS:
            assert not got.visitors_exact
            assert abs(got.visitors - expected["visitors"]) <= expected["visitors"] * 0.02
        else:
            assert got.visitors_exact
            assert got.visitors == expected["visitors"]
        if expected["sessions"]:
            assert_within_bound(got.visit_duration_seconds, traffic, start, end, filters)
        else:
            assert got.visit_duration_seconds == 0.0


async def test_one_filter_on_any_dimension_reads_sealed_values(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    for dimension in DIMENSIONS:
        await assert_sealed_and_exact(
            warehouse, traffic, {dimension: commonest(traffic, dimension)}
        )
    await assert_sealed_and_exact(warehouse, traffic, {"page": "/nowhere"})  # nothing matches


@pytest.mark.parametrize(
    "filters",
    [
        {"country": "GB", "device": "desktop"},
        {"browser": "Chrome", "os": "Windows"},
        {"country": "GB", "device": "mobile", "browser": "Mobile Safari", "os": "iOS"},
        {"country": "ZZ", "device": "mobile"},  # nothing matches
    ],
)
async def test_audience_filters_read_sealed_audiences(
    warehouse: Warehouse, traffic: Traffic, filters: dict[str, str]
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    await assert_sealed_and_exact(warehouse, traffic, filters)


async def test_other_filters_never_read_sealed_hours(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    for filters in (
        {"country": "GB", "entry_page": "/"},
        {"page": "/kitchens", "device": "mobile"},
        {"prop:productId": "shaker-oak"},
    ):
        got = await long_range(warehouse).period(START, END, filters)
        expected = oracle.stats_period(traffic, START, END, filters)
        assert got.visit_duration_exact
        assert got.visitors_exact and got.visitors == expected["visitors"]
        assert got.visit_duration_seconds == expected["visitDurationSeconds"]
        assert got.sessions == expected["sessions"]


async def test_an_hour_with_a_session_of_two_audiences_is_read_per_session_when_filtered(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    """A session whose events came from two countries matches a filter on either, once: its
    hour's audience rows cannot say so, so that hour is read from the sessions' rows under
    several audience filters; one filter reads its values, which can."""
    moved = START + timedelta(days=4, hours=3, minutes=5)
    session = uuid.uuid4()
    rows = [
        pageview(
            session, moved + timedelta(minutes=n), moved, country=country, device_type="mobile"
        )
        for n, country in enumerate(("GB", "FR"))
    ]
    mixed = Traffic([*traffic.tracking, *rows], traffic.domain)
    await oracle.load_past(warehouse, mixed)
    await session_hours.seal(warehouse)
    audience = await session_hours.sealed(warehouse, START, END, session_hours.Rows.AUDIENCE)
    assert len(audience) == await sealed_count(warehouse) - 1
    assert moved.replace(minute=0) not in audience
    values = await session_hours.sealed(warehouse, START, END, session_hours.Rows.VALUES)
    assert moved.replace(minute=0) in values
    for filters in (
        {"country": "GB", "device": "mobile"},
        {"country": "FR", "device": "mobile"},
        {"country": "GB"},
        {"country": "FR"},
        {},
    ):
        expected = oracle.stats_period(mixed, START, END, filters)
        got = await long_range(warehouse).period(START, END, filters)
        assert (got.sessions, got.bounce_rate) == (expected["sessions"], expected["bounceRate"])
        assert not got.visit_duration_exact


async def test_a_late_event_counts_at_once_and_the_hour_is_sealed_again(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    sealed = await sealed_count(warehouse)
    before = await long_range(warehouse).period(START, END, {})
    # A new session that started on the third day, stored now.
    late = msgspec.structs.replace(
        tracking_rows(1)[0],
        session_id=uuid.uuid4(),
        user_id=None,
        event_type="PAGEVIEW",
        received_at=START + timedelta(days=2, hours=5, minutes=10),
        occurred_at=START + timedelta(days=2, hours=5, minutes=10),
        session_started_at=START + timedelta(days=2, hours=5, minutes=10),
        is_bot=False,
    )
    await oracle.load_past(warehouse, Traffic([late], []))
    assert await sealed_count(warehouse) == sealed - 1  # its hour no longer read sealed
    after = await long_range(warehouse).period(START, END, {})
    assert after.sessions == before.sessions + 1
    assert after.bounce_rate > before.bounce_rate  # one pageview alone: a bounce
    assert await session_hours.seal(warehouse) == 1
    assert await sealed_count(warehouse) == sealed
    assert (await long_range(warehouse).period(START, END, {})).sessions == after.sessions


async def test_hours_stored_before_the_seals_existed_are_sealed_too(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await warehouse.command("TRUNCATE TABLE stats_session_touches")  # as before sql/0028
    before = await exact(warehouse).period(START, END, {})
    assert await session_hours.seal(warehouse) > DAYS * 20
    got = await long_range(warehouse).period(START, END, {})
    assert not got.visit_duration_exact
    assert (got.sessions, got.bounce_rate) == (before.sessions, before.bounce_rate)


async def test_hours_sealed_before_values_existed_are_read_per_session_then_sealed_again(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    # As sealed before sql/0029: no audience rows, and the hours do not say what they left out.
    await warehouse.command("TRUNCATE TABLE stats_session_audience")
    await warehouse.command("TRUNCATE TABLE stats_session_values")
    await warehouse.command(
        "INSERT INTO stats_session_hours (start_hour, sealed_at, sessions, bounces, unplaced)"
        " SELECT start_hour, sealed_at + toIntervalMillisecond(1), sessions, bounces, -1"
        " FROM stats_session_hours FINAL"
    )
    assert len(await session_hours.sealed(warehouse, START, END)) > DAYS * 20
    for rows in (session_hours.Rows.VALUES, session_hours.Rows.AUDIENCE):
        assert await session_hours.sealed(warehouse, START, END, rows) == []
    expected = oracle.stats_period(traffic, START, END, {"country": "GB"})
    got = await long_range(warehouse).period(START, END, {"country": "GB"})
    assert got.visit_duration_exact  # no sealed hour read
    assert (got.sessions, got.visit_duration_seconds) == (
        expected["sessions"],
        expected["visitDurationSeconds"],
    )
    assert (await long_range(warehouse).period(START, END, {})).visit_duration_exact
    # The next seal gives them their histograms, values and audiences.
    assert await session_hours.seal(warehouse) == await sealed_count(warehouse)
    audience = await session_hours.sealed(warehouse, START, END, session_hours.Rows.AUDIENCE)
    assert len(audience) > DAYS * 20
    got = await long_range(warehouse).period(START, END, {"country": "GB"})
    assert not got.visit_duration_exact
    assert got.sessions == expected["sessions"]


async def test_hours_sealed_before_journeys_existed_are_read_raw_then_sealed_again(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    # As sealed before sql/0033: no journey rows, and the hours do not say how many.
    await warehouse.command("TRUNCATE TABLE stats_session_journeys")
    await warehouse.command(
        "INSERT INTO stats_session_hours (start_hour, sealed_at, sessions, bounces, histogram,"
        " unplaced) SELECT start_hour, sealed_at + toIntervalMillisecond(1), sessions, bounces,"
        " histogram, unplaced FROM stats_session_hours FINAL"
    )
    hours = await session_hours.sealed(warehouse, START, END, session_hours.Rows.AUDIENCE)
    assert len(hours) > DAYS * 20  # still read for the stats
    assert await session_hours.sealed(warehouse, START, END, session_hours.Rows.JOURNEYS) == []
    questions: list[dict[str, Any]] = [{"entry": "/"}, {"goal": "BOOKING_COMPLETE", "steps": 2}]
    expected = [oracle.journeys(traffic, START, END, **q) for q in questions]
    assert expected[0] and expected[1]
    for question, answer in zip(questions, expected, strict=True):
        got = await journeys.journeys(warehouse, START, END, **question)
        assert msgspec.to_builtins(got)["paths"] == answer  # from the raw events
    # The next seal takes them again, journeys and all.
    assert await session_hours.seal(warehouse) == await sealed_count(warehouse)
    kept = await session_hours.sealed(warehouse, START, END, session_hours.Rows.JOURNEYS)
    assert len(kept) > DAYS * 20
    for question, answer in zip(questions, expected, strict=True):
        got = await journeys.journeys(warehouse, START, END, **question)
        assert msgspec.to_builtins(got)["paths"] == answer


async def test_a_seal_past_its_time_stops_after_the_day_it_began_and_the_next_goes_on(
    warehouse: Warehouse, traffic: Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    await oracle.load_past(warehouse, traffic)
    monkeypatch.setattr(session_hours, "SEAL_RUN_SECONDS", 0.0)
    first = await session_hours.seal(warehouse)  # the hours with sessions of one day
    assert 0 < first <= session_hours.SEAL_CHUNK_HOURS
    assert await sealed_count(warehouse) == first
    second = await session_hours.seal(warehouse)
    assert 0 < second <= session_hours.SEAL_CHUNK_HOURS
    assert await sealed_count(warehouse) == first + second
    monkeypatch.setattr(session_hours, "SEAL_RUN_SECONDS", 60.0)
    await session_hours.seal(warehouse)
    assert await session_hours.seal(warehouse) == 0
    expected = oracle.stats_period(traffic, START, END, {"page": "/"})
    assert (await long_range(warehouse).period(START, END, {"page": "/"})).sessions == (
        expected["sessions"]
    )


def test_a_seal_sums_runs_of_hours_a_day_long_at_most() -> None:
    at = START
    hours = [(at + timedelta(hours=h), at) for h in (0, 1, 23, 24, 30, 71, 200)]
    chunks = session_hours._days(hours)
    assert [[int((h - at).total_seconds() // 3600) for h, _ in c] for c in chunks] == [
        [0, 1, 23],
        [24, 30],
        [71],
        [200],
    ]


async def test_the_median_of_few_sessions_far_apart_is_their_mean_as_exactly(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    """Two sessions of 5 s and 300 s under one filter: the sealed median is their mean (cut
    to 8 bits each), not the shorter one."""
    began = START + timedelta(days=3, hours=9, minutes=1)
    rows = [
        pageview(session, began + timedelta(seconds=offset), began, utm_campaign="two-far-apart")
        for session, length in ((uuid.uuid4(), 5), (uuid.uuid4(), 300))
        for offset in (0, length)
    ]
    both = Traffic([*traffic.tracking, *rows], traffic.domain)
    await oracle.load_past(warehouse, both)
    await session_hours.seal(warehouse)
    filters = {"utm_campaign": "two-far-apart"}
    got = await long_range(warehouse).period(START, END, filters)
    assert not got.visit_duration_exact
    assert oracle.stats_period(both, START, END, filters)["visitDurationSeconds"] == 152.5
    assert_within_bound(got.visit_duration_seconds, both, START, END, filters)


async def test_a_seal_cut_before_its_hours_row_is_never_read_and_the_next_one_clears_it(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    late = msgspec.structs.replace(
        tracking_rows(1)[0],
        session_id=uuid.uuid4(),
        user_id=None,
        event_type="PAGEVIEW",
        received_at=START + timedelta(days=6, hours=2, minutes=30),
        occurred_at=START + timedelta(days=6, hours=2, minutes=30),
        session_started_at=START + timedelta(days=6, hours=2, minutes=30),
        is_bot=False,
        utm_campaign="late",
    )
    both = Traffic([*traffic.tracking, late], traffic.domain)
    await oracle.load_past(warehouse, Traffic([late], []))
    # A seal of the touched hour that stopped after its values and audiences, with bogus sums.
    hour = late.received_at.replace(minute=0)
    for table in ("stats_session_values", "stats_session_audience"):
        await warehouse.command(
            f"INSERT INTO {table} SELECT * REPLACE (sessions * 1000 AS sessions,"
            f" now64(3, 'UTC') AS sealed_at) FROM {table}"
            " WHERE start_hour = {hour:DateTime('UTC')}",
            {"hour": hour},
        )
    await warehouse.command(
        "INSERT INTO stats_session_journeys SELECT * REPLACE (['/bogus'] AS pages, [0] AS page_at,"
        " now64(3, 'UTC') AS sealed_at) FROM stats_session_journeys"
        " WHERE start_hour = {hour:DateTime('UTC')}",
        {"hour": hour},
    )
    for filters in ({"utm_campaign": "late"}, {"country": "GB"}, {"country": "GB", "os": "iOS"}):
        expected = oracle.stats_period(both, START, END, filters)
        assert (await long_range(warehouse).period(START, END, filters)).sessions == expected[
            "sessions"
        ]
    for question in ({"entry": "/"}, {"goal": "BOOKING_COMPLETE"}):
        got = await journeys.journeys(warehouse, START, END, limit=100, **question)
        assert msgspec.to_builtins(got)["paths"] == oracle.journeys(
            both, START, END, limit=100, **question
        )
    assert await session_hours.seal(warehouse) == 1
    for table in session_hours.SEALED_PER_HOUR:
        versions = await warehouse.scalar(
            f"SELECT uniqExact(sealed_at) FROM {table} WHERE start_hour = {{hour:DateTime('UTC')}}",
            {"hour": hour},
        )
        assert versions == 1  # the earlier seals' rows deleted
    for filters in ({"utm_campaign": "late"}, {"country": "GB"}, {"country": "GB", "os": "iOS"}):
        expected = oracle.stats_period(both, START, END, filters)
        assert (await long_range(warehouse).period(START, END, filters)).sessions == expected[
            "sessions"
        ]


async def test_a_retry_that_fills_a_failed_view_unseals_its_hours(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    """stats_sessions refuses a batch its source already stored; its hours are sealed without
    those sessions; the retry under the same token fills stats_sessions and touches the hours
    (the touches keep no deduplication window, sql/0031, so a replay touches them whatever
    order the views ran in), so those seals no longer count and the long range's sessions
    stay exact."""
    late = {r.session_id for r in traffic.tracking[::40]}
    rest = [r for r in traffic.tracking if r.session_id not in late]
    batch = msgspec.json.Encoder().encode_lines(
        [r for r in traffic.tracking if r.session_id in late]
    )
    columns = TrackingRow.__struct_fields__
    await warehouse.insert_lines(
        "tracking_events", columns, msgspec.json.Encoder().encode_lines(rest), dedup_token="rest"
    )
    await warehouse.command("ALTER TABLE stats_sessions ADD CONSTRAINT refused CHECK 0")
    with pytest.raises(WarehouseError, match="refused"):
        await warehouse.insert_lines("tracking_events", columns, batch, dedup_token="late")
    await warehouse.command("ALTER TABLE stats_sessions DROP CONSTRAINT refused")
    assert await session_hours.seal(warehouse) > DAYS * 20
    await warehouse.insert_lines("tracking_events", columns, batch, dedup_token="late")
    got = await long_range(warehouse).period(START, END, {})
    expected = oracle.stats_period(traffic, START, END, {})
    assert (got.sessions, got.bounce_rate) == (expected["sessions"], expected["bounceRate"])
    assert got.pageviews == expected["pageviews"]
