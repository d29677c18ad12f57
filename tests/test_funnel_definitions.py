"""Funnels admins define, and every funnel's per-step drop-off and median time
(materialized/funnel_chains.py): the chains agree with the plain-Python oracle, with
windowFunnel where steps never share an event (the built-ins), and the API stores, lists,
removes and refuses definitions by field."""

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from api.funnels import DOMAIN_TYPES
from cli.demo_traffic import Traffic
from core.clickhouse import Warehouse
from core.settings import PRODUCT_PAGE_PATTERN
from materialized import funnels
from materialized.funnel_chains import SAMPLES, estimate, follow
from materialized.funnel_definitions import (
    FunnelDefinition,
    built_in_steps,
    chain_steps,
    page_regex,
)
from tests import oracle
from tests.conftest import Running, tracking_rows
from tests.test_dashboard_api import bearer, token

LONDON = zoneinfo.ZoneInfo("Europe/London")
WEEK = 7 * 86400


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return oracle.around_2026_clock_changes(sessions_per_day=80, seeds=(41, 42))


RANGES = [
    (oracle.as_utc("2026-03-25", LONDON), oracle.as_utc("2026-04-02", LONDON)),
    (oracle.as_utc("2026-10-21", LONDON), oracle.as_utc("2026-10-28", LONDON)),
    (oracle.as_utc("2026-03-29", LONDON), oracle.as_utc("2026-03-30", LONDON)),
]


def definition(**body: Any) -> FunnelDefinition:
    return msgspec.convert(body, FunnelDefinition)


DEFINED = [
    definition(  # repeated steps: two pageviews, then a booking
        name="two-pages-then-book",
        steps=[
            {"eventType": "PAGEVIEW"},
            {"eventType": "PAGEVIEW"},
            {"eventType": "BOOKING_START"},
        ],
    ),
    definition(  # a page pattern and a property
        name="oak-to-order",
        steps=[
            {"eventType": "PAGEVIEW", "page": "/kitchens/*"},
            {"eventType": "PRODUCT_VIEW", "properties": {"productId": "shaker-oak"}},
            {"eventType": "ADD_TO_WISHLIST"},
            {"eventType": "order-created"},
        ],
        windowSeconds=86400,
    ),
    definition(
        name="filter-brochure",
        steps=[
            {"eventType": "FILTER_APPLY", "properties": {"filter": "oak", "facet": "colour"}},
            {"eventType": "BROCHURE_REQUEST"},
        ],
        windowSeconds=3600,
    ),
    definition(  # the most steps a funnel may have, repeats among them
        name="eight-steps",
        steps=[
            {"eventType": "PAGEVIEW"},
            {"eventType": "PAGEVIEW"},
            {"eventType": "PRODUCT_VIEW"},
            {"eventType": "PAGEVIEW"},
            {"eventType": "ADD_TO_WISHLIST"},
            {"eventType": "PAGEVIEW"},
            {"eventType": "BOOKING_START"},
            {"eventType": "BOOKING_COMPLETE"},
        ],
    ),
    definition(
        name="order-pay-order",
        steps=[
            {"eventType": "order-created"},
            {"eventType": "payment-succeeded"},
            {"eventType": "order-created"},
        ],
    ),
]


async def test_every_chain_agrees_with_the_oracle_and_the_built_ins_with_windowfunnel(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    for start, end in RANGES:
        for funnel in funnels.FUNNELS.values():
            steps = built_in_steps(funnel, PRODUCT_PAGE_PATTERN)
            got = [msgspec.to_builtins(s) for s in await follow(warehouse, steps, start, end, WEEK)]
            assert got == oracle.funnel_chain(traffic, steps, start, end, WEEK), funnel.name
            counted = await funnels.compute(warehouse, funnel, start, end, WEEK)
            assert [(s["step"], s["count"]) for s in got] == counted.steps
            assert counted.steps == oracle.funnel_steps(traffic, funnel, start, end, WEEK)
        for defined in DEFINED:
            steps = chain_steps(defined, DOMAIN_TYPES)
            window = defined.window_seconds
            got = [
                msgspec.to_builtins(s) for s in await follow(warehouse, steps, start, end, window)
            ]
            assert got == oracle.funnel_chain(traffic, steps, start, end, window), defined.name
    start, end = RANGES[0]
    deep = await follow(warehouse, chain_steps(DEFINED[1], DOMAIN_TYPES), start, end, 86400)
    assert deep[0].count > deep[1].count > 0 and deep[1].median_seconds_from_previous is not None
    repeated = await follow(warehouse, chain_steps(DEFINED[0], DOMAIN_TYPES), start, end, WEEK)
    assert repeated[0].count > repeated[1].count > repeated[2].count > 0


def _every_funnel() -> list[tuple[str, Any, int]]:
    built = [
        (f.name, built_in_steps(f, PRODUCT_PAGE_PATTERN), WEEK) for f in funnels.FUNNELS.values()
    ]
    return built + [(d.name, chain_steps(d, DOMAIN_TYPES), d.window_seconds) for d in DEFINED]


async def _sampled_visitors(warehouse: Warehouse, traffic: Traffic, below: int) -> Traffic:
    """The traffic of the visitors whose id hashes below `below` of SAMPLES (as visitor_events
    and the domain side pick them), every event of each."""
    ids = sorted(
        {str(r.user_id or r.session_id) for r in traffic.tracking}
        | {str(r.customer_id) for r in traffic.domain if r.customer_id is not None}
    )
    rows = await warehouse.rows(
        "SELECT toString(id) FROM (SELECT arrayJoin({ids:Array(UUID)}) AS id)"
        f" WHERE cityHash64(id) % {SAMPLES} < {{below:UInt16}}",
        {"ids": ids, "below": below},
    )
    kept = {r[0] for r in rows}
    return Traffic(
        [r for r in traffic.tracking if str(r.user_id or r.session_id) in kept],
        [r for r in traffic.domain if str(r.customer_id) in kept],
    )


async def test_a_sampled_funnel_is_every_event_of_its_visitors_scaled_within_its_margins(
    warehouse: Warehouse, traffic: Traffic
) -> None:
    """Past the threshold a funnel is counted on the visitors of a hash sample (each one's
    events whole, bots out): each count is exactly the sampled visitors' own, scaled by the
    share, and the whole traffic's count is near it for its stated margin. Below it, exact."""
    await oracle.load_past(warehouse, traffic)
    start, end = RANGES[0]
    sampled_funnels: list[str] = []
    for name, steps, window in _every_funnel():
        whole = oracle.funnel_chain(traffic, steps, start, end, window)
        types = {s.event_type for s in steps}
        events = sum(
            r.event_type in types and not r.is_bot and start <= r.occurred_at < end
            for r in traffic.tracking
        )
        # A quarter of its browser events: counted on about a quarter of the visitors.
        sampled = await estimate(warehouse, steps, start, end, window, rows=events // 4)
        share = sampled.share
        if not events:  # domain events only: few, always counted exactly
            assert share == 1.0 and sampled.steps == await follow(
                warehouse, steps, start, end, window
            )
            continue
        assert share < 1, name
        sampled_funnels.append(name)
        below = round(share * SAMPLES)
        subset = oracle.funnel_chain(
            await _sampled_visitors(warehouse, traffic, below), steps, start, end, window
        )
        for got, seen, want in zip(sampled.steps, subset, whole, strict=True):
            assert got.count == round(seen["count"] / share), (name, got.step)
            assert got.median_seconds_from_previous == seen["medianSecondsFromPrevious"]
            assert isinstance(got.margin, int) and got.margin > 0
            # Within twice the 95% margin (about 4 standard errors): one draw of visitors
            # serves every step here, so a 95% check would pass or fail for all of them at
            # once; how often the margins hold is measured at scale (bench/stats.py).
            assert abs(got.count - want["count"]) <= 2 * got.margin, (name, got.step)
        assert [s.drop_off for s in sampled.steps[1:]] == [
            a.count - b.count for a, b in zip(sampled.steps, sampled.steps[1:], strict=False)
        ]
    assert len(sampled_funnels) >= 4, sampled_funnels
    # An event copied twice into visitor_events (a backfill overlapping the view) counts once:
    # twice, one pageview would be both steps of PAGEVIEW, PAGEVIEW.
    steps = chain_steps(DEFINED[0], DOMAIN_TYPES)
    before = await estimate(warehouse, steps, start, end, WEEK, rows=200)
    assert before.share < 1
    await warehouse.command("INSERT INTO visitor_events SELECT * FROM visitor_events")
    assert await estimate(warehouse, steps, start, end, WEEK, rows=200) == before
    for name, steps, window in _every_funnel():
        counted = await estimate(warehouse, steps, start, end, window, rows=10**9)
        assert counted.share == 1.0
        assert [msgspec.to_builtins(s) for s in counted.steps] == oracle.funnel_chain(
            traffic, steps, start, end, window
        ), name
        never = await estimate(warehouse, steps, start, end, window, rows=0)
        assert never.share == 1.0


async def test_one_event_never_takes_two_places_and_order_is_by_time(warehouse: Warehouse) -> None:
    """Events stored out of order are followed in time order; a single pageview is not two
    steps of PAGEVIEW, PAGEVIEW; a step past the window does not extend the chain."""
    base = datetime(2026, 11, 20, 9, tzinfo=UTC)
    visitor = uuid.uuid4()
    plan = [  # (visitor, minutes after base, event type) in the order they are stored
        (visitor, 30, "BOOKING_START"),
        (visitor, 10, "PAGEVIEW"),
        (visitor, 0, "PAGEVIEW"),
        (uuid.uuid4(), 0, "PAGEVIEW"),  # one pageview, then a booking: not two pageviews
        (None, 0, "BOOKING_START"),
        (uuid.uuid4(), 0, "PAGEVIEW"),  # two pageviews, the booking after the window
        (None, 1, "PAGEVIEW"),
        (None, 200, "BOOKING_START"),
    ]
    rows, last = [], visitor
    for (who, minutes, kind), row in zip(plan, tracking_rows(len(plan)), strict=True):
        last = who or last
        at = base + timedelta(minutes=minutes)
        rows.append(
            msgspec.structs.replace(
                row, user_id=last, event_type=kind, occurred_at=at, received_at=base
            )
        )
    traffic = Traffic(rows, [])
    await oracle.load_past(warehouse, traffic)
    steps = chain_steps(DEFINED[0], DOMAIN_TYPES)
    start, end = base - timedelta(hours=1), base + timedelta(hours=6)
    got = [msgspec.to_builtins(s) for s in await follow(warehouse, steps, start, end, 3600)]
    assert got == oracle.funnel_chain(traffic, steps, start, end, 3600)
    assert [s["count"] for s in got] == [3, 2, 1]
    assert [s["dropOff"] for s in got] == [0, 1, 1]
    assert [s["medianSecondsFromPrevious"] for s in got] == [None, 330.0, 1200.0]


def test_a_page_pattern_is_the_whole_path_with_stars() -> None:
    import re

    regex = page_regex("/kitchens/*")
    assert re.search(regex, "/kitchens/shaker-oak") and not re.search(regex, "/a/kitchens/x")
    assert not re.search(page_regex("/a.b"), "/axb")  # a dot is a dot
    assert re.search(page_regex("/blog/*/comments"), "/blog/x/comments")


def admin() -> dict[str, str]:
    return bearer(token())


FUNNELS = "/v1/analytics/funnels"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "x", "steps": [{"eventType": "PAGEVIEW"}]}, "$.steps"),
        ({"name": "x", "steps": [{"eventType": "PAGEVIEW"}] * 9}, "$.steps"),
        ({"name": "Bad Name", "steps": [{"eventType": "PAGEVIEW"}] * 2}, "$.name"),
        ({"steps": [{"eventType": "PAGEVIEW"}] * 2}, "$"),
        (
            {"name": "x", "steps": [{"eventType": "PAGEVIEW"}, {"eventType": "SIGNUP"}]},
            "$.steps[1].eventType",
        ),
        (
            {
                "name": "x",
                "steps": [{"eventType": "PAGEVIEW"}, {"eventType": "order-created", "page": "/"}],
            },
            "$.steps[1].page",
        ),
        (
            {"name": "x", "steps": [{"eventType": "PAGEVIEW", "page": "kitchens"}] * 2},
            "$.steps[0].page",
        ),
        (
            {"name": "x", "steps": [{"eventType": "PAGEVIEW", "properties": {"a": 1}}] * 2},
            "$.steps[0].properties[...]",  # msgspec names a mapping's value so
        ),
        (
            {"name": "x", "steps": [{"eventType": "PAGEVIEW"}] * 2, "windowSeconds": 5},
            "$.windowSeconds",
        ),
        ({"name": "x", "steps": [{"eventType": "PAGEVIEW", "colour": "oak"}] * 2}, "$.steps[0]"),
    ],
)
async def test_an_invalid_definition_is_a_400_naming_the_field(
    server: Running, body: dict[str, Any], path: str
) -> None:
    resp = await server.http.post(FUNNELS, json=body, headers=admin())
    assert resp.status_code == 400, resp.text
    assert resp.json()["path"] == path, resp.json()


async def test_define_list_compute_and_remove_a_funnel(
    server: Running, warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    body = msgspec.to_builtins(DEFINED[1])
    assert (await server.http.post(FUNNELS, json=body)).status_code == 401
    created = await server.http.post(FUNNELS, json=body, headers=admin())
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "oak-to-order"}
    again = await server.http.post(FUNNELS, json=body, headers=admin())
    assert again.status_code == 409 and again.json()["path"] == "$.name"
    built_in = await server.http.post(FUNNELS, json={**body, "name": "booking"}, headers=admin())
    assert built_in.status_code == 409
    listed = (await server.http.get(FUNNELS, headers=admin())).json()["funnels"]
    assert [(f["name"], f["builtIn"]) for f in listed] == [
        ("booking", True),
        ("checkout", True),
        ("oak-to-order", False),
    ]
    assert listed[2]["steps"] == body["steps"] and listed[2]["windowSeconds"] == 86400
    assert listed[0]["steps"][0] == {"eventType": "PAGEVIEW", "pageRegex": PRODUCT_PAGE_PATTERN}

    start, end = RANGES[0]
    params = {"from": "2026-03-25T00:00:00", "to": "2026-04-02T00:00:00"}
    computed = await server.http.get(f"{FUNNELS}/oak-to-order", params=params, headers=admin())
    assert computed.status_code == 200, computed.text
    report = computed.json()
    steps = chain_steps(DEFINED[1], DOMAIN_TYPES)
    assert report["steps"] == oracle.funnel_chain(traffic, steps, start, end, 86400)
    assert report["funnelName"] == "oak-to-order" and report["windowSeconds"] == 86400
    first, last = report["steps"][0]["count"], report["steps"][-1]["count"]
    assert report["conversionRate"] == round(last / first * 100, 2)
    booking = (await server.http.get(f"{FUNNELS}/booking", params=params, headers=admin())).json()
    assert booking["funnelName"] == "BOOKING"
    assert booking["steps"][0]["dropOff"] == 0 and booking["steps"][0]["count"] > 0

    assert (await server.http.delete(f"{FUNNELS}/booking", headers=admin())).status_code == 409
    removed = await server.http.delete(f"{FUNNELS}/oak-to-order", headers=admin())
    assert removed.status_code == 204
    assert (await server.http.delete(f"{FUNNELS}/oak-to-order", headers=admin())).status_code == 404
    gone = await server.http.get(f"{FUNNELS}/oak-to-order", params=params, headers=admin())
    assert gone.status_code == 404
    # Defined again with other steps under the same name: a new answer, not the cached one.
    other = {**body, "steps": body["steps"][:2]}
    assert (await server.http.post(FUNNELS, json=other, headers=admin())).status_code == 201
    redefined = await server.http.get(f"{FUNNELS}/oak-to-order", params=params, headers=admin())
    assert len(redefined.json()["steps"]) == 2


async def test_the_api_samples_past_its_threshold_and_counts_all_when_asked(
    make_server: Any, settings: Any, warehouse: Warehouse, traffic: Traffic
) -> None:
    await oracle.load_past(warehouse, traffic)
    server = await make_server(msgspec.structs.replace(settings, funnel_sample_rows=100))
    params = {"from": "2026-03-25T00:00:00", "to": "2026-04-02T00:00:00"}
    url = f"{FUNNELS}/booking"
    sampled = (await server.http.get(url, params=params, headers=admin())).json()
    assert 0 < sampled["sampleShare"] < 1
    assert all(step["margin"] > 0 for step in sampled["steps"])
    start, end = RANGES[0]
    steps = built_in_steps(funnels.FUNNELS["booking"], PRODUCT_PAGE_PATTERN)
    whole = oracle.funnel_chain(traffic, steps, start, end, WEEK)
    counted = await server.http.get(url, params={**params, "exact": "true"}, headers=admin())
    assert "sampleShare" not in counted.json() and counted.json()["steps"] == whole
    bad = await server.http.get(url, params={**params, "exact": "yes"}, headers=admin())
    assert bad.status_code == 400 and bad.json()["parameter"] == "exact"
