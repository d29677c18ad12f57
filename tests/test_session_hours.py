"""Sealed session hours (materialized/session_hours.py): a long range's overview from one row
per sealed hour gives the sessions and bounce rate the sessions' rows give, the median within
its stated bound; a late event or an erasure is counted at once, before any new seal."""

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from cli.demo_traffic import Traffic, generate
from core.clickhouse import Warehouse
from materialized import session_hours
from materialized.stats import Stats
from tests import oracle
from tests.conftest import tracking_rows

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


def long_range(warehouse: Warehouse) -> Stats:
    """As past EXACT_VISITORS_MAX_EVENTS: the answer a month at scale gets."""
    return Stats(warehouse, LONDON, exact_max_events=0)


async def sealed_count(warehouse: Warehouse) -> int:
    return len(await session_hours.sealed(warehouse, START - timedelta(days=1), END))


def assert_within_bound(
    got: float, traffic: Traffic, start: datetime, end: datetime, filters: dict[str, str]
) -> None:
    """A sealed median: at most 2^-7 below the lower middle duration, never above the upper."""
    durations = sorted(oracle.session_durations_ms(traffic, start, end, filters))
    low, high = durations[(len(durations) - 1) // 2], durations[len(durations) // 2]
    assert low * (1 - 2**-7) / 1000 - 0.001 <= got <= high / 1000 + 0.001


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


@pytest.mark.parametrize(
    "filters",
    [
        {"country": "GB"},
        {"device": "mobile"},
        {"country": "GB", "device": "desktop"},
        {"browser": "Chrome", "os": "Windows"},
        {"country": "ZZ"},  # nothing matches
    ],
)
async def test_audience_filters_read_sealed_audiences_and_agree_with_the_oracle(
    warehouse: Warehouse, traffic: Traffic, filters: dict[str, str]
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    for start, end in ((START, END), (START + timedelta(minutes=17), END - timedelta(minutes=43))):
        expected = oracle.stats_period(traffic, start, end, filters)
        got = await long_range(warehouse).period(start, end, filters)
        assert not got.visit_duration_exact
        assert (got.sessions, got.bounce_rate) == (expected["sessions"], expected["bounceRate"])
        assert (got.visitors, got.pageviews) == (expected["visitors"], expected["pageviews"])
        assert got.visitors_exact
        if expected["sessions"]:
            assert_within_bound(got.visit_duration_seconds, traffic, start, end, filters)
        else:
            assert got.visit_duration_seconds == 0.0


async def test_other_filters_never_read_sealed_hours(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    for filters in ({"page": "/kitchens"}, {"country": "GB", "entry_page": "/"}):
        got = await long_range(warehouse).period(START, END, filters)
        expected = oracle.stats_period(traffic, START, END, filters)
        assert got.visit_duration_exact
        assert got.visit_duration_seconds == expected["visitDurationSeconds"]
        assert got.sessions == expected["sessions"]


async def test_an_hour_with_a_session_of_two_audiences_is_read_per_session_when_filtered(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    """A session whose events came from two countries matches a filter on either, once: its
    hour's audience rows cannot say so, so that hour is read from the sessions' rows."""
    moved = START + timedelta(days=4, hours=3, minutes=5)
    session = uuid.uuid4()
    rows = [
        msgspec.structs.replace(
            tracking_rows(1)[0],
            event_id=uuid.uuid4(),
            session_id=session,
            user_id=None,
            event_type="PAGEVIEW",
            received_at=moved + timedelta(minutes=n),
            occurred_at=moved + timedelta(minutes=n),
            session_started_at=moved,
            is_bot=False,
            country=country,
            device_type="mobile",
        )
        for n, country in enumerate(("GB", "FR"))
    ]
    mixed = Traffic([*traffic.tracking, *rows], traffic.domain)
    await oracle.load_past(warehouse, mixed)
    await session_hours.seal(warehouse)
    audience = await session_hours.sealed(warehouse, START, END, audience=True)
    assert len(audience) == await sealed_count(warehouse) - 1
    assert moved.replace(minute=0) not in audience
    for filters in ({"country": "GB"}, {"country": "FR"}, {"device": "mobile"}, {}):
        expected = oracle.stats_period(mixed, START, END, filters)
        got = await long_range(warehouse).period(START, END, filters)
        assert (got.sessions, got.bounce_rate) == (expected["sessions"], expected["bounceRate"])


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


async def test_hours_sealed_before_audiences_existed_are_read_per_session_when_filtered(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    await session_hours.seal(warehouse)
    # As sealed before sql/0029: no audience rows, and the hours do not say what they left out.
    await warehouse.command("TRUNCATE TABLE stats_session_audience")
    await warehouse.command(
        "INSERT INTO stats_session_hours SELECT start_hour, sealed_at + toIntervalMillisecond(1),"
        " sessions, bounces, durations, -1 FROM stats_session_hours FINAL"
    )
    assert await session_hours.sealed(warehouse, START, END, audience=True) == []
    expected = oracle.stats_period(traffic, START, END, {"country": "GB"})
    got = await long_range(warehouse).period(START, END, {"country": "GB"})
    assert got.visit_duration_exact  # no sealed hour read
    assert (got.sessions, got.visit_duration_seconds) == (
        expected["sessions"],
        expected["visitDurationSeconds"],
    )
    assert not (await long_range(warehouse).period(START, END, {})).visit_duration_exact
    # The next seal gives them their audiences.
    assert await session_hours.seal(warehouse) == await sealed_count(warehouse)
    assert len(await session_hours.sealed(warehouse, START, END, audience=True)) > DAYS * 20
    got = await long_range(warehouse).period(START, END, {"country": "GB"})
    assert not got.visit_duration_exact
    assert got.sessions == expected["sessions"]
