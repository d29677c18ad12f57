"""The stats API agrees exactly with a plain-Python calculation over the same traffic (days cut
in Europe/London across both 2026 clock changes, bots excluded, filters, previous period), and
refuses bad parameters by name."""

import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from cli.demo_traffic import Traffic
from core.clickhouse import Warehouse
from materialized.dimensions import DIMENSIONS
from materialized.funnels import FUNNELS
from materialized.stats import Interval, Stats, escape_filter_value, parse_filter
from tests import oracle
from tests.conftest import Running, event, wait_for
from tests.test_dashboard_api import bearer, token

LONDON = zoneinfo.ZoneInfo("Europe/London")


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return oracle.around_2026_clock_changes(sessions_per_day=120, seeds=(21, 22))


@pytest.fixture
async def loaded(warehouse: Warehouse, traffic: Traffic) -> AsyncIterator[Stats]:
    await oracle.load_past(warehouse, traffic)
    yield Stats(warehouse, LONDON)


RANGES = [
    ("the spring week", "2026-03-25", "2026-04-02"),
    ("London day of the spring change (23 h)", "2026-03-29", "2026-03-30"),
    ("London day of the autumn change (25 h)", "2026-10-25", "2026-10-26"),
    ("the autumn week, Monday to Monday", "2026-10-19", "2026-10-26"),
    ("an empty range", "2026-06-01", "2026-06-02"),
]
FILTERS = [
    {},
    {"country": "GB"},
    {"device": "mobile", "country": "GB"},
    {"referrer": "google.com"},
    {"utm_source": "newsletter"},
    {"entry_page": "/kitchens"},
    {"page": "/book-appointment"},
    {"event_type": "BOOKING_COMPLETE"},
    {"city": "Linköping"},
]


async def test_overview_agrees_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    for label, first, last in RANGES:
        start, end = oracle.as_utc(first, LONDON), oracle.as_utc(last, LONDON)
        for filters in FILTERS:
            case = f"{label}, filter {filters}"
            got = msgspec.to_builtins(await loaded.overview(start, end, filters))
            previous = got.pop("previous")
            assert got.pop("visitorsExact") is previous.pop("visitorsExact") is True
            assert got.pop("visitDurationExact") is previous.pop("visitDurationExact") is True
            assert got.pop("range") == {
                "from": start.astimezone(LONDON).isoformat(),
                "to": end.astimezone(LONDON).isoformat(),
                "timezone": "Europe/London",
            }
            assert got == oracle.stats_period(traffic, start, end, filters), case
            length = end - start
            assert previous.pop("range")["to"] == start.astimezone(LONDON).isoformat()
            expected = oracle.stats_period(traffic, start - length, start, filters)
            assert previous == expected, case


async def test_ranges_cut_mid_hour_agree_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    """Sessions starting in the hours a range cuts are told apart by their exact start;
    filters read a rollup (stats_visits when the filter and dimension are session-level,
    stats_pages otherwise) for whole hours and raw events for the partial hours at each end (or
    raw events only when no whole hour fits): all exact."""
    ranges = [
        (
            datetime(2026, 3, 26, 10, 17, 3, tzinfo=UTC),
            datetime(2026, 3, 28, 15, 43, 30, tzinfo=UTC),
        ),
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 2, 0, tzinfo=UTC)),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 59, 59, tzinfo=UTC)),
        (datetime(2026, 3, 27, 11, 5, tzinfo=UTC), datetime(2026, 3, 27, 11, 55, tzinfo=UTC)),
    ]
    compared = 0
    for start, end in ranges:
        for filters in FILTERS:
            got = msgspec.to_builtins(await loaded.period(start, end, filters))
            for key in ("range", "visitorsExact", "visitDurationExact"):
                got.pop(key)
            expected = oracle.stats_period(traffic, start, end, filters)
            assert got == expected, f"{start} to {end}, filter {filters}"
            compared += expected["sessions"] + expected["visitors"]
            for dimension in ("browser", "utm_source", "page", "event_type"):
                rows = await loaded.breakdown(dimension, start, end, filters, limit=5)
                assert msgspec.to_builtins(rows.rows) == oracle.stats_breakdown(
                    traffic, dimension, start, end, filters, 5
                ), (start, end, filters, dimension)
    assert compared > 500


async def test_the_numbers_are_not_trivial(loaded: Stats, traffic: Traffic) -> None:
    """The oracle cases above compare real numbers, not zeros."""
    start, end = oracle.as_utc("2026-03-25", LONDON), oracle.as_utc("2026-04-02", LONDON)
    week = await loaded.period(start, end, {})
    assert week.visitors > 500 and week.sessions > 800 and week.pageviews > 2000
    assert 5 < week.bounce_rate < 60 and week.visit_duration_seconds > 30
    bots = [r for r in traffic.tracking if r.is_bot]
    assert bots, "the traffic has bots, which must not count"


async def test_every_breakdown_agrees_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    start, end = oracle.as_utc("2026-03-25", LONDON), oracle.as_utc("2026-04-02", LONDON)
    for dimension in DIMENSIONS:
        got = await loaded.breakdown(dimension, start, end, {}, limit=50)
        expected = oracle.stats_breakdown(traffic, dimension, start, end, {}, 50)
        assert msgspec.to_builtins(got.rows) == expected, dimension
        assert len(expected) >= 2, dimension
    start, end = oracle.as_utc("2026-10-19", LONDON), oracle.as_utc("2026-10-28", LONDON)
    for filters in FILTERS[1:4]:
        for dimension in ("page", "browser", "utm_campaign", "event_type", "city"):
            got = await loaded.breakdown(dimension, start, end, filters, limit=5)
            expected = oracle.stats_breakdown(traffic, dimension, start, end, filters, 5)
            assert msgspec.to_builtins(got.rows) == expected, (dimension, filters)


@pytest.mark.parametrize(
    ("first", "last", "hours"),
    [
        ("2026-03-27", "2026-04-01", [24, 24, 23, 24, 24]),
        ("2026-10-23", "2026-10-28", [24, 24, 25, 24, 24]),
    ],
)
async def test_days_are_cut_in_the_report_time_zone_across_clock_changes(
    loaded: Stats, traffic: Traffic, first: str, last: str, hours: list[int]
) -> None:
    start, end = oracle.as_utc(first, LONDON), oracle.as_utc(last, LONDON)
    got = await loaded.timeseries(start, end, Interval.DAY, {})
    expected = oracle.stats_days(traffic, start, end, LONDON)
    assert [e["hours"] for e in expected] == hours
    assert [msgspec.to_builtins(p) for p in got.points] == [
        {k: e[k] for k in ("t", "visitors", "pageviews")} for e in expected
    ]
    assert all(p.pageviews > 0 for p in got.points)


async def test_filtered_series_agree_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    """Filtered series read the filtered rollups for whole hours and raw events for the
    partial hours at the ends: days across both clock changes and hours, all exact."""
    ranges = [
        (oracle.as_utc("2026-03-27", LONDON), oracle.as_utc("2026-04-01", LONDON)),
        (
            oracle.as_utc("2026-10-24", LONDON) + timedelta(minutes=37),
            oracle.as_utc("2026-10-27", LONDON) - timedelta(hours=2, minutes=5),
        ),
    ]
    for start, end in ranges:
        for filters in FILTERS[1:]:
            got = await loaded.timeseries(start, end, Interval.DAY, filters)
            expected = oracle.stats_days(traffic, start, end, LONDON, filters)
            assert [msgspec.to_builtins(p) for p in got.points] == [
                {k: e[k] for k in ("t", "visitors", "pageviews")} for e in expected
            ], (start, end, filters)
    start, end = oracle.as_utc("2026-10-25", LONDON), oracle.as_utc("2026-10-26", LONDON)
    for filters in ({"device": "mobile"}, {"page": "/book-appointment"}):
        hourly = await loaded.timeseries(start, end, Interval.HOUR, filters)
        assert len(hourly.points) == 25
        for point in hourly.points:
            moment = datetime.fromisoformat(point.t).astimezone(UTC)
            expected = oracle.stats_period(traffic, moment, moment + timedelta(hours=1), filters)
            assert (point.visitors, point.pageviews) == (
                expected["visitors"],
                expected["pageviews"],
            ), (point.t, filters)
        assert sum(p.visitors for p in hourly.points) > 0


async def test_hourly_points_cover_every_hour_zeros_too(loaded: Stats, traffic: Traffic) -> None:
    # The 25-hour London day of the autumn change, and an empty day.
    start, end = oracle.as_utc("2026-10-25", LONDON), oracle.as_utc("2026-10-26", LONDON)
    got = await loaded.timeseries(start, end, Interval.HOUR, {})
    assert len(got.points) == 25
    assert [p.t for p in got.points[:3]] == [
        "2026-10-25T00:00:00+01:00",
        "2026-10-25T01:00:00+01:00",
        "2026-10-25T01:00:00+00:00",
    ]
    assert (
        sum(p.pageviews for p in got.points)
        == oracle.stats_period(traffic, start, end, {})["pageviews"]
    )
    empty = await loaded.timeseries(
        oracle.as_utc("2026-06-01", LONDON), oracle.as_utc("2026-06-02", LONDON), Interval.HOUR, {}
    )
    assert len(empty.points) == 24 and all(p.visitors == p.pageviews == 0 for p in empty.points)


async def test_large_ranges_merge_sketches_and_say_so(loaded: Stats, traffic: Traffic) -> None:
    # Past the threshold the rollups answer: pageviews stay exact, visitors come from
    # uniqCombined64(12) sketches of whole UTC days and the hours at both ends.
    loaded = Stats(loaded.warehouse, LONDON, exact_max_events=100)
    start = oracle.as_utc("2026-03-25", LONDON) + timedelta(hours=5)
    end = oracle.as_utc("2026-04-02", LONDON) - timedelta(hours=3)
    got = await loaded.period(start, end, {})
    expected = oracle.stats_period(traffic, start, end, {})
    assert got.visitors_exact is False
    assert got.pageviews == expected["pageviews"]
    assert got.sessions == expected["sessions"]
    assert abs(got.visitors - expected["visitors"]) <= expected["visitors"] * 0.05
    rows = await loaded.breakdown("country", start, end, {}, limit=10)
    exact = oracle.stats_breakdown(traffic, "country", start, end, {}, 10)
    assert [(r.value, r.pageviews) for r in rows.rows][:2] == [
        (e["value"], e["pageviews"]) for e in exact
    ][:2]
    series = await loaded.timeseries(start, end, Interval.DAY, {})
    assert sum(p.pageviews for p in series.points) == expected["pageviews"]
    # Cut mid-hour, unfiltered, under one filter or several on the audience: the partial
    # hours from raw events, as sketches too, so pageviews stay exact; any other pair of
    # filters keeps exact visitors.
    start, end = start + timedelta(minutes=23), end - timedelta(minutes=7)
    mixed = {"country": "GB", "page": "/kitchens"}
    for filters in (
        {},
        {"country": "GB"},
        {"device": "mobile"},
        {"country": "GB", "os": "iOS"},
        {"country": "GB", "device": "mobile", "browser": "Mobile Safari"},
        mixed,
    ):
        got = await loaded.period(start, end, filters)
        expected = oracle.stats_period(traffic, start, end, filters)
        assert (got.pageviews, got.sessions) == (expected["pageviews"], expected["sessions"])
        assert got.visitors_exact is (filters == mixed), filters
        if filters == mixed:
            assert got.visitors == expected["visitors"]
        assert abs(got.visitors - expected["visitors"]) <= expected["visitors"] * 0.05
        assert expected["pageviews"] > 0, filters


# Through the HTTP API.

STATS = "/v1/analytics/stats"


def admin() -> dict[str, str]:
    return bearer(token())


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/overview", {"to": "2026-03-02"}, "from"),
        ("/overview", {"from": "2026-03-02", "to": "2026-03-01"}, "to"),
        ("/overview", {"from": "yesterday", "to": "2026-03-01"}, "from"),
        (
            "/overview",
            {"from": "2026-03-01", "to": "2026-03-02", "filter": "planet:mars"},
            "filter",
        ),
        ("/overview", {"from": "2026-03-01", "to": "2026-03-02", "filter": "country"}, "filter"),
        (
            "/overview",
            {"from": "2026-03-01", "to": "2026-03-02", "filter": "country:GB;country:SE"},
            "filter",
        ),
        ("/breakdown", {"from": "2026-03-01", "to": "2026-03-02"}, "dimension"),
        ("/breakdown", {"from": "2026-03-01", "to": "2026-03-02", "dimension": "ip"}, "dimension"),
        (
            "/breakdown",
            {"from": "2026-03-01", "to": "2026-03-02", "dimension": "page", "limit": "0"},
            "limit",
        ),
        (
            "/breakdown",
            {"from": "2026-03-01", "to": "2026-03-02", "dimension": "page", "limit": "1e9"},
            "limit",
        ),
        ("/timeseries", {"from": "2026-03-01", "to": "2026-03-02"}, "interval"),
        ("/timeseries", {"from": "2026-03-01", "to": "2026-03-02", "interval": "week"}, "interval"),
        ("/timeseries", {"from": "2026-01-01", "to": "2026-03-02", "interval": "hour"}, "interval"),
    ],
)
async def test_bad_parameters_are_refused_by_name(
    server: Running, path: str, params: dict[str, str], parameter: str
) -> None:
    resp = await server.http.get(STATS + path, params=params, headers=admin())
    assert resp.status_code == 400, resp.text
    assert resp.json()["parameter"] == parameter
    assert parameter in resp.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        f"{STATS}/overview",
        f"{STATS}/breakdown",
        f"{STATS}/timeseries",
        f"{STATS}/realtime",
        "/v1/analytics/funnels/booking",
    ],
)
async def test_stats_are_for_admins_only(server: Running, path: str) -> None:
    assert (await server.http.get(path)).status_code == 401
    assert (await server.http.get(path, headers=bearer(token("CUSTOMER")))).status_code == 403


async def test_an_unknown_funnel_is_a_404_naming_the_known_ones(server: Running) -> None:
    resp = await server.http.get(
        "/v1/analytics/funnels/signup",
        params={"from": "2026-03-01", "to": "2026-03-02"},
        headers=admin(),
    )
    assert resp.status_code == 404
    assert "booking checkout" in resp.json()["error"]


async def test_funnels_for_any_range_agree_with_the_oracle(
    server: Running, warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    for name, funnel in (("booking", "BOOKING"), ("checkout", "CHECKOUT")):
        params = {"from": "2026-03-26T09:00", "to": "2026-03-31T18:00"}
        resp = await server.http.get(
            f"/v1/analytics/funnels/{name}", params=params, headers=admin()
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        start, end = (
            datetime.fromisoformat(params["from"]).replace(tzinfo=LONDON),
            datetime.fromisoformat(params["to"]).replace(tzinfo=LONDON),
        )
        expected = oracle.funnel_steps(traffic, FUNNELS[name], start, end, 7 * 86400)
        assert body["funnelName"] == funnel
        assert [(s["step"], s["count"]) for s in body["steps"]] == expected
        assert expected[0][1] > 0
        assert datetime.fromisoformat(body["periodFrom"]) == start
        first, last = expected[0][1], expected[-1][1]
        assert body["conversionRate"] == round(last / first * 100, 2)


async def test_beacons_count_once_bots_never_and_realtime_sees_them(
    server: Running, warehouse: Warehouse
) -> None:
    user = "5b0f3a52-3c63-4a51-9c7e-111111111111"
    session = "0d9c1b7e-4c51-4a53-9a6f-7f0a6a0b9f11"
    sent = [
        event(sessionId=session, eventId="8c3a5d2e-0000-4000-8000-000000000001"),
        event(
            sessionId=session,
            eventId="8c3a5d2e-0000-4000-8000-000000000002",
            eventType="PRODUCT_VIEW",
        ),
        event(userId=user, eventId="8c3a5d2e-0000-4000-8000-000000000003"),
        event(),  # a one-pageview session: a bounce
    ]
    bot = event()
    bot["metadata"]["userAgent"] = "Mozilla/5.0 (compatible; Googlebot/2.1)"
    for body in [sent, sent[:2], [bot]]:  # the second post repeats two beacons
        resp = await server.http.post("/v1/analytics/track", json=body)
        assert resp.status_code == 202, resp.text

    async def stored() -> bool:
        await server.drain()
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") == 5)

    await wait_for(stored)
    now = datetime.now(UTC)
    params = {
        "from": (now - timedelta(hours=1)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
    }
    resp = await server.http.get(f"{STATS}/overview", params=params, headers=admin())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-cache"] == "MISS"
    # Visitors: the session, the known user, the anonymous bouncer; the bot counts nowhere.
    assert (body["visitors"], body["sessions"], body["pageviews"]) == (3, 3, 3)
    assert body["bounceRate"] == round(2 / 3 * 100, 2)
    again = await server.http.get(f"{STATS}/overview", params=params, headers=admin())
    assert again.headers["x-cache"] == "HIT" and again.json() == body

    filtered = await server.http.get(
        f"{STATS}/breakdown",
        params={**params, "dimension": "event_type", "filter": "page:/kitchens/shaker-oak"},
        headers=admin(),
    )
    assert filtered.json() == {
        "dimension": "event_type",
        "rows": [
            {"value": "PAGEVIEW", "visitors": 3, "pageviews": 3},
            {"value": "PRODUCT_VIEW", "visitors": 1, "pageviews": 0},
        ],
    }
    realtime = (await server.http.get(f"{STATS}/realtime", headers=admin())).json()
    assert realtime["visitors"] == 3
    assert len(realtime["pageviewsPerMinute"]) == 30
    assert sum(realtime["pageviewsPerMinute"][-2:]) == 3
    series = await server.http.get(
        f"{STATS}/timeseries", params={**params, "interval": "hour"}, headers=admin()
    )
    points = series.json()["points"]
    assert len(points) in (2, 3) and sum(p["pageviews"] for p in points) == 3


@pytest.mark.parametrize(
    "value", ["/kitchens;country:ZZ", "/a\\;b", "/c:d\\", "/;;", "/plain", "/e\\\\f;g"]
)
def test_any_value_round_trips_through_a_filter(value: str) -> None:
    raw = f"page:{escape_filter_value(value)};country:GB"
    assert parse_filter(raw) == {"page": value, "country": "GB"}
    assert parse_filter("page:/a\\b") == {"page": "/a\\b"}  # any other backslash is itself


async def test_a_breakdown_value_holding_a_filter_cannot_rewrite_the_filter(
    server: Running, warehouse: Warehouse
) -> None:
    """A page path of `;country:ZZ` filtered on as a breakdown row gives it: that page's
    numbers, not those of a country that does not exist."""
    odd = [event() for _ in range(3)]
    for beacon in odd:
        beacon["metadata"]["url"] = "https://www.lomashwood.co.uk/kitchens;country:ZZ"
    resp = await server.http.post("/v1/analytics/track", json=[*odd, event(), event()])
    assert resp.status_code == 202
    await server.drain()
    now = datetime.now(UTC)
    params = {
        "from": (now - timedelta(hours=1)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
    }
    rows = (
        await server.http.get(
            f"{STATS}/breakdown", params={**params, "dimension": "page"}, headers=admin()
        )
    ).json()["rows"]
    (row,) = [r for r in rows if "ZZ" in r["value"]]
    assert row["pageviews"] == 3
    overview = await server.http.get(
        f"{STATS}/overview",
        params={**params, "filter": f"page:{escape_filter_value(row['value'])}"},
        headers=admin(),
    )
    assert overview.status_code == 200, overview.text
    assert overview.json()["pageviews"] == 3
