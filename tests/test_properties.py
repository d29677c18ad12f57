"""Event properties as questions (materialized/properties.py): the keys seen in a range, and
`prop:KEY` as a breakdown dimension and a filter, agree exactly with the plain-Python oracle,
over the demo's properties and over odd ones (unicode, empty, very long, numbers against
strings, repeated keys, nulls and objects)."""

import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from cli.demo_traffic import Traffic
from core.clickhouse import Warehouse
from materialized import properties
from materialized.stats import (
    MAX_FILTER_VALUE_CHARS,
    FilterError,
    Interval,
    Stats,
    escape_filter_value,
    parse_filter,
)
from tests import oracle
from tests.conftest import Running, tracking_rows
from tests.test_dashboard_api import bearer, token

LONDON = zoneinfo.ZoneInfo("Europe/London")
STATS = "/v1/analytics/stats"


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return oracle.around_2026_clock_changes(sessions_per_day=80, seeds=(31, 32))


@pytest.fixture
async def loaded(warehouse: Warehouse, traffic: Traffic) -> AsyncIterator[Stats]:
    await oracle.load_past(warehouse, traffic)
    yield Stats(warehouse, LONDON)


RANGES = [
    (oracle.as_utc("2026-03-25", LONDON), oracle.as_utc("2026-04-02", LONDON)),
    (oracle.as_utc("2026-10-25", LONDON), oracle.as_utc("2026-10-26", LONDON)),  # 25 hours
    (  # cut mid-hour at both ends
        oracle.as_utc("2026-03-28", LONDON) + timedelta(minutes=13),
        oracle.as_utc("2026-03-30", LONDON) - timedelta(minutes=41),
    ),
]
EVENT_TYPES = [None, "PRODUCT_VIEW", "FILTER_APPLY", "BROCHURE_REQUEST", "PAGEVIEW"]


async def test_the_keys_seen_agree_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    for start, end in RANGES:
        for event_type in EVENT_TYPES:
            got = await properties.keys(loaded.warehouse, start, end, event_type, 100)
            expected = oracle.property_keys(traffic, start, end, event_type, 100)
            assert msgspec.to_builtins(got)["keys"] == expected, (start, event_type)
    start, end = RANGES[0]
    seen = {k.key for k in (await properties.keys(loaded.warehouse, start, end, None, 100)).keys}
    assert {"productId", "price", "filter", "facet", "brochure", "target"} <= seen
    assert len((await properties.keys(loaded.warehouse, start, end, None, 2)).keys) == 2


BREAKDOWN_FILTERS: list[dict[str, str]] = [
    {},
    {"country": "GB"},
    {"prop:filter": "oak"},
    {"prop:productId": "shaker-oak", "device": "mobile"},
    {"page": "/bedrooms"},
]


async def test_property_breakdowns_agree_with_the_oracle(loaded: Stats, traffic: Traffic) -> None:
    dimensions = ["prop:productId", "prop:filter", "prop:brochure", "prop:price", "prop:none"]
    for start, end in RANGES:
        for dimension in dimensions:
            for filters in BREAKDOWN_FILTERS:
                for event_type in (None, "PRODUCT_VIEW"):
                    got = await loaded.breakdown(dimension, start, end, filters, 50, event_type)
                    expected = oracle.stats_breakdown(
                        traffic, dimension, start, end, filters, 50, event_type
                    )
                    assert got.dimension == dimension
                    assert msgspec.to_builtins(got.rows) == expected, (dimension, filters)
    start, end = RANGES[0]
    prices = await loaded.breakdown("prop:price", start, end, {}, 10)
    assert {row.value for row in prices.rows} == {"1249.5", "1899", "2450.75"}
    assert all(row.events >= row.visitors > 0 for row in prices.rows)


async def test_property_filters_agree_with_the_oracle_everywhere(
    loaded: Stats, traffic: Traffic
) -> None:
    """A `prop:` filter is answered from raw events, exactly: overview, series, breakdowns."""
    cases: list[dict[str, str]] = [
        {"prop:filter": "oak", "country": "GB"},
        {"prop:productId": "shaker-oak"},
        {"prop:price": "1249.5"},
        {"prop:brochure": "kitchens-2026", "prop:facet": "nothing"},
    ]
    for start, end in RANGES:
        for filters in cases:
            got = msgspec.to_builtins(await loaded.period(start, end, filters))
            got.pop("range")
            assert got.pop("visitorsExact") is got.pop("visitDurationExact") is True
            assert got == oracle.stats_period(traffic, start, end, filters), filters
            series = await loaded.timeseries(start, end, Interval.DAY, filters)
            assert [msgspec.to_builtins(p) for p in series.points] == [
                {k: e[k] for k in ("t", "visitors", "pageviews")}
                for e in oracle.stats_days(traffic, start, end, LONDON, filters)
            ]
            for dimension in ("page", "country", "entry_page"):
                rows = await loaded.breakdown(dimension, start, end, filters, 20)
                assert msgspec.to_builtins(rows.rows) == oracle.stats_breakdown(
                    traffic, dimension, start, end, filters, 20
                )
    start, end = RANGES[0]
    oak = await loaded.period(start, end, {"prop:filter": "oak"})
    assert oak.visitors > 0 and oak.sessions > 0  # FILTER_APPLY events: no pageviews


ODD = [
    '{"k":"oak"}',
    '{"k":"Oak"}',
    '{"k":"é😀"}',
    '{"k":"\\u00e9\\ud83d\\ude00"}',  # the same text, escaped
    '{"k":""}',
    '{"k":"' + "long " * 800 + '"}',
    '{"k":5}',
    '{"k":"5"}',
    '{"k":5.0}',
    '{"k":1.50}',
    '{"k":1e3}',
    '{"k":-0}',
    '{"k":0.1}',
    '{"k":1e21}',
    '{"k":1.5e-7}',
    '{"k":12345678901234567890}',
    '{"k":123456789012345678901234567890}',
    '{"k":true}',
    '{"k":null}',
    '{"k":{"a":1}}',
    '{"k":[1,2]}',
    '{"k":"a\\"b;c:d\\\\"}',
    '{"k":"first","k":"second"}',
    '{"ключ":"значение","k":"oak"}',
    '{"":"the empty key"}',
    '{"a:b;c":"a key of separators"}',
    "{}",
]


@pytest.fixture
async def odd(warehouse: Warehouse) -> Traffic:
    """Each odd properties object on three pageviews, of two visitors, an hour apart."""
    rows = []
    base = datetime(2026, 11, 20, 9, tzinfo=UTC)
    for n, text in enumerate(ODD):
        for i, row in enumerate(tracking_rows(3)):
            at = base + timedelta(hours=n % 5, minutes=i)
            rows.append(
                msgspec.structs.replace(
                    row,
                    properties=text,
                    received_at=at,
                    occurred_at=at,
                    session_started_at=at,
                    user_id=None if i < 2 else rows[-1].session_id,
                    event_type="PAGEVIEW" if i else "CLICK",
                )
            )
    traffic = Traffic(rows, [])
    await oracle.load_past(warehouse, traffic)
    return traffic


async def test_odd_property_values_agree_with_the_oracle(
    warehouse: Warehouse, odd: Traffic
) -> None:
    stats = Stats(warehouse, LONDON)
    start, end = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    keys = await properties.keys(warehouse, start, end, None, 100)
    assert msgspec.to_builtins(keys)["keys"] == oracle.property_keys(odd, start, end, None, 100)
    assert {k.key for k in keys.keys} == {"k", "ключ", "a:b;c"}
    for dimension in ("prop:k", "prop:ключ", "prop:a:b;c"):
        got = await stats.breakdown(dimension, start, end, {}, 100)
        assert msgspec.to_builtins(got.rows) == oracle.stats_breakdown(
            odd, dimension, start, end, {}, 100
        ), dimension
    values = {row.value: row for row in (await stats.breakdown("prop:k", start, end, {}, 100)).rows}
    # Numbers in their shortest form: "5", 5 and 5.0 are one value; 1.50 is 1.5, 1e3 is 1000.
    assert values["5"].events == 9 and "1.5" in values and "1000" in values
    assert {"é😀", "", "true", "0", "0.1", "1e21", "1.5e-7", "first"} <= set(values)  # -0 is 0
    assert values["é😀"].events == 6  # written plain and escaped
    assert "second" not in values and "null" not in values and '{"a":1}' not in values
    # Every value a row shows filters back to its own numbers, through the escaping; one over
    # a filter's 512 characters is refused by name.
    for value, row in values.items():
        if len(value) > MAX_FILTER_VALUE_CHARS:
            with pytest.raises(FilterError, match="over 512 chars"):
                parse_filter(f"prop:k:{escape_filter_value(value)}")
            continue
        filters = parse_filter(f"prop:k:{escape_filter_value(value)}")
        period = await stats.period(start, end, filters)
        assert (period.pageviews, period.visitors) == (row.pageviews, row.visitors), value
    separators = parse_filter(
        f"prop:{escape_filter_value('a:b;c')}:{escape_filter_value('a key of separators')}"
    )
    assert separators == {"prop:a:b;c": "a key of separators"}
    assert (await stats.period(start, end, separators)).pageviews == 2


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("prop:filter", "is not `prop:KEY:value`"),
        ("prop::oak", "needs a key"),
        ("prop:" + "k" * 600 + ":v", "at most 512"),
        ("prop:filter:oak;prop:filter:white", "given twice"),
    ],
)
def test_a_bad_property_filter_says_what_is_wrong(raw: str, says: str) -> None:
    with pytest.raises(FilterError, match=says):
        parse_filter(raw)


def test_a_property_filter_reads_its_key_and_value() -> None:
    assert parse_filter("prop:filter:oak;country:GB") == {"prop:filter": "oak", "country": "GB"}
    assert parse_filter("prop:a\\:b:c:d") == {"prop:a:b": "c:d"}
    assert parse_filter("prop:size:") == {"prop:size": ""}


def admin() -> dict[str, str]:
    return bearer(token())


async def test_the_api_answers_property_questions_and_refuses_bad_ones_by_name(
    server: Running, warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    start, end = RANGES[0]
    params = {"from": "2026-03-25T00:00:00", "to": "2026-04-02T00:00:00"}
    keys = await server.http.get(
        f"{STATS}/properties", params={**params, "eventType": "PRODUCT_VIEW"}, headers=admin()
    )
    assert keys.status_code == 200, keys.text
    assert keys.json()["keys"] == oracle.property_keys(traffic, start, end, "PRODUCT_VIEW", 100)
    rows = await server.http.get(
        f"{STATS}/breakdown",
        params={**params, "dimension": "prop:filter", "filter": "country:GB"},
        headers=admin(),
    )
    assert rows.status_code == 200, rows.text
    assert rows.json() == {
        "dimension": "prop:filter",
        "rows": oracle.stats_breakdown(traffic, "prop:filter", start, end, {"country": "GB"}, 10),
    }
    plain = await server.http.get(
        f"{STATS}/breakdown", params={**params, "dimension": "country"}, headers=admin()
    )
    assert "events" not in plain.json()["rows"][0]  # only property rows carry it
    filtered = await server.http.get(
        f"{STATS}/overview", params={**params, "filter": "prop:filter:oak"}, headers=admin()
    )
    assert (
        filtered.json()["pageviews"]
        == oracle.stats_period(traffic, start, end, {"prop:filter": "oak"})["pageviews"]
    )
    bad = [
        ("/breakdown", {"dimension": "prop:"}, "dimension"),
        ("/breakdown", {"dimension": "props:x"}, "dimension"),
        ("/breakdown", {"dimension": "prop:x", "eventType": "SIGNUP"}, "eventType"),
        ("/breakdown", {"dimension": "page", "eventType": "PAGEVIEW"}, "eventType"),
        ("/properties", {"eventType": "pageview"}, "eventType"),
        ("/properties", {"limit": "5000"}, "limit"),
        ("/overview", {"filter": "prop:x"}, "filter"),
    ]
    for path, extra, parameter in bad:
        resp = await server.http.get(STATS + path, params={**params, **extra}, headers=admin())
        assert resp.status_code == 400, (path, extra, resp.text)
        assert resp.json()["parameter"] == parameter
    assert (await server.http.get(f"{STATS}/properties", params=params)).status_code == 401
