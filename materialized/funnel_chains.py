"""A funnel's steps with what happens between them: per step the visitors reaching it, the
drop-off from the step before and the median time from it (`GET /v1/analytics/funnels/{name}`,
built-in or defined).

The chains are windowFunnel's (materialized/funnels.py), followed with the time of each step:
per visitor (userId, else sessionId; a domain event's customerId), events in time order
(ties in step order, then by the steps matched), a chain per step, each the latest that
reached it. An event of step 1 starts a chain; an event of step k extends the chain of step
k-1 when it comes no later than the window after that chain's first event, and becomes the
chain of step k. Every
chain moves from the chains as they were before the event, so one event fills one place of a
chain at most: with a repeated step (PAGEVIEW, then PAGEVIEW) a single pageview is not two.
Once the last step is reached the visitor's chain is kept. Where steps never share an event
(the built-ins), the counts are windowFunnel's own, which the recompute job publishes
(tests/test_funnel_definitions.py checks both agree). The time from step k-1 to step k is
measured on each visitor's furthest chain; its median is linear between the two middle values.

`estimate` is what the dashboard asks: past a size it follows the same chains over a sample of
whole visitors (visitor_events: every event of the visitors whose id hashes into the lowest
buckets), scales the counts by the share read and states each count's 95% margin; the medians
are the sample's own. `follow` is always exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from core.clickhouse import Warehouse
from core.limits import TRUST_CLIENT_FUTURE, TRUST_CLIENT_PAST
from materialized import properties

SAMPLES = 256  # visitor_events.sample: cityHash64(visitor) % 256


@dataclass(frozen=True, slots=True)
class ChainStep:
    name: str
    source: str  # "tracking" or "domain"
    event_type: str
    page_regex: str = ""  # tracking: the path must match (RE2)
    properties: tuple[tuple[str, str], ...] = ()  # tracking: exact values (properties.py)


class StepResult(msgspec.Struct, rename="camel", kw_only=True):
    step: str
    count: int
    drop_off: int  # visitors of the step before who did not reach this one (0 for the first)
    median_seconds_from_previous: float | None  # None for the first step or when none reached it
    # Only from a sample: the half-width of the count's 95% interval (absent when exact).
    margin: int | msgspec.UnsetType = msgspec.UNSET


class Followed(msgspec.Struct, frozen=True):
    steps: list[StepResult]
    share: float  # of the visitors read: 1.0 counted exactly, else the sample's share


def _condition(step: ChainStep, index: int, parameters: dict[str, Any]) -> str:
    parameters[f"type{index}"] = step.event_type
    parts = [f"source = '{step.source}'", f"event_type = {{type{index}:String}}"]
    if step.page_regex:
        parameters[f"page{index}"] = step.page_regex
        parts.append(f"match(path, {{page{index}:String}})")
    for n, (key, value) in enumerate(step.properties):
        parameters[f"key{index}_{n}"], parameters[f"value{index}_{n}"] = key, value
        parts.append(f"{properties.value_sql(f'key{index}_{n}')} = {{value{index}_{n}:String}}")
    return " AND ".join(parts)


def chain_sql(
    steps: tuple[ChainStep, ...], parameters: dict[str, Any], sample: int | None = None
) -> str:
    """`sample`: read only the visitors of visitor_events' samples below it (None: all, from
    the raw events)."""
    size = len(steps)
    # The steps an event matches, as bits (bit i - 1: step i): no array per event.
    mask = " + ".join(
        f"if({_condition(step, i, parameters)}, {1 << (i - 1)}, 0)"
        for i, step in enumerate(steps, start=1)
    )
    parts = []
    packed = "ts * 65536 + bitAnd(steps, bitNot(steps) + 1) * 256 + steps"
    if sample is None:
        visitor, source, kept = "ifNull(user_id, session_id)", "tracking_events", "NOT is_bot"
        customers, events = "", f"groupArray({packed})"
    else:  # bots are left out of visitor_events as it is written
        parameters["sample"] = sample
        visitor, source, kept = "visitor", "visitor_events", "sample < {sample:UInt16}"
        customers = f" AND cityHash64(assumeNotNull(customer_id)) % {SAMPLES} < {{sample:UInt16}}"
        # visitor_events is written apart from the raw events (its backfill may overlap the
        # view): an event found there twice counts once, by its id (per visitor: a global
        # LIMIT 1 BY event_id doubled the time at 100M).
        events = f"arrayMap(e -> e.2, groupUniqArray((toUInt128(event_id), {packed})))"
    if any(step.source == "tracking" for step in steps):
        parts.append(
            f"SELECT 'tracking' AS source, {visitor} AS visitor, event_id,"
            " toUInt64(toUnixTimestamp64Milli(occurred_at)) AS ts, event_type, path, properties"
            f" FROM {source} WHERE {kept} AND event_type IN {{tracking_types:Array(String)}}"
            " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
            " AND occurred_at < {end:DateTime64(3, 'UTC')}"
            # Implied by the two above (core/limits.py); lets the scan skip parts.
            " AND received_at >= {received_from:DateTime64(3, 'UTC')}"
            " AND received_at < {received_to:DateTime64(3, 'UTC')}"
        )
    if any(step.source == "domain" for step in steps):
        parts.append(
            "SELECT 'domain' AS source, assumeNotNull(customer_id) AS visitor, event_id,"
            " toUInt64(toUnixTimestamp64Milli(occurred_at)) AS ts, event_type, '' AS path,"
            " '{}' AS properties FROM analytics_events FINAL"
            " WHERE event_type IN {domain_types:Array(String)} AND customer_id IS NOT NULL"
            " AND occurred_at >= {start:DateTime64(3, 'UTC')}"
            f" AND occurred_at < {{end:DateTime64(3, 'UTC')}}{customers}"
        )
    # An event is one number: its time (ms) * 2^16 + its first step's bit * 2^8 + its steps'
    # bits, so a visitor's events sort as plain numbers, in time, ties in step order. Events
    # equal in all three have the same effect on the chains, so their order does not matter.
    ts, bits = "intDiv(e, 65536)", "(e % 256)"

    def zero(k: int) -> str:
        return f"tuple({', '.join(['toUInt64(0)'] * k)})"

    def times(k: int, chain: str) -> str:
        return ", ".join(f"{chain}.{j}" for j in range(1, k + 1))

    # The chains are followed a step at a time over the whole sorted array, not an event at a
    # time (arrayFold's state per event cost about twice as much): ext{k}[p] is the chain of
    # step k that event p makes, from chain k-1 as it stood before p (the array shifted by one);
    # chain{k}[p] the latest of them up to p (arrayFill carries it forward). A chain is a tuple
    # of its step times, zeros when there is none (no event is at time 0).
    columns = [
        f"arrayMap(e -> if(bitTest({bits}, 0), tuple({ts}), {zero(1)}), events) AS ext1",
        "arrayFill(c -> c.1 > 0, ext1) AS chain1",
    ]
    for k in range(2, size + 1):
        before = f"arrayPushFront(arrayPopBack(chain{k - 1}), {zero(k - 1)})"
        columns.append(
            f"arrayMap((e, c) -> if(bitTest({bits}, {k - 1}) AND c.1 > 0"
            f" AND {ts} <= c.1 + {{window:UInt64}}, tuple({times(k - 1, 'c')}, {ts}),"
            f" {zero(k)}), events, {before}) AS ext{k}"
        )
        if k < size:
            columns.append(f"arrayFill(c -> c.1 > 0, ext{k}) AS chain{k}")
    # The furthest chain: the first to reach the last step (kept from then on), else the
    # latest chain of the furthest step reached.
    done = f"arrayFirst(c -> c.1 > 0, ext{size})"
    furthest = [f"{done}.1 > 0, [{times(size, done)}]"] + [
        f"chain{k}[-1].1 > 0, [{times(k, f'chain{k}[-1]')}]" for k in range(size - 1, 0, -1)
    ]
    return (
        "SELECT step, count(), quantileExactInclusiveIf(0.5)(gap, step > 1) FROM ("
        f" SELECT multiIf({', '.join(furthest)}, CAST([] AS Array(UInt64))) AS times FROM ("
        f" SELECT {', '.join(columns)} FROM ("
        f" SELECT arraySort({events}) AS events FROM ("
        f" SELECT visitor, event_id, ts, toUInt64({mask}) AS steps"
        f" FROM ({' UNION ALL '.join(parts)})) WHERE steps > 0 GROUP BY visitor))"
        " WHERE notEmpty(times))"
        " ARRAY JOIN arrayEnumerate(times) AS step,"
        " arrayMap(k -> if(k = 1, 0, times[k] - times[k - 1]), arrayEnumerate(times)) AS gap"
        " GROUP BY step"
    )


async def follow(
    warehouse: Warehouse,
    steps: tuple[ChainStep, ...],
    start: datetime,
    end: datetime,
    window_seconds: int,
) -> list[StepResult]:
    """The funnel counted exactly, from every visitor's raw events."""
    return (await _follow(warehouse, steps, start, end, window_seconds, None)).steps


async def estimate(
    warehouse: Warehouse,
    steps: tuple[ChainStep, ...],
    start: datetime,
    end: datetime,
    window_seconds: int,
    rows: int,
) -> Followed:
    """The funnel counted exactly while the browser events of its steps' types in the range
    number at most twice `rows` (0: always); past that, from the share of visitors that holds
    about `rows` of them."""
    types = sorted({s.event_type for s in steps if s.source == "tracking"})
    if rows == 0 or not types:  # domain events alone are few: counted whole
        return await _follow(warehouse, steps, start, end, window_seconds, None)
    found = await warehouse.rows(
        # The decision needs only the size, deterministic and cheap: the hourly counts (by
        # receive time) of the steps' types, pages and properties aside. Those hours outlive
        # the raw days, so a range reaching past them may be sampled on fewer events.
        "SELECT sum(events) FROM tracking_events_hourly WHERE event_type IN {types:Array(String)}"
        " AND hour >= toStartOfHour({start:DateTime64(3, 'UTC')})"
        " AND hour < {end:DateTime64(3, 'UTC')}",
        {"types": types, "start": start, "end": end},
    )
    expected = int(found[0][0])
    if expected <= 2 * rows:
        return await _follow(warehouse, steps, start, end, window_seconds, None)
    return await _follow(
        warehouse, steps, start, end, window_seconds, max(1, math.ceil(SAMPLES * rows / expected))
    )


async def _follow(
    warehouse: Warehouse,
    steps: tuple[ChainStep, ...],
    start: datetime,
    end: datetime,
    window_seconds: int,
    sample: int | None,
) -> Followed:
    parameters: dict[str, Any] = {
        "start": start,
        "end": end,
        "received_from": start - TRUST_CLIENT_FUTURE,
        "received_to": end + TRUST_CLIENT_PAST,
        "window": window_seconds * 1000,
        "tracking_types": sorted({s.event_type for s in steps if s.source == "tracking"}),
        "domain_types": sorted({s.event_type for s in steps if s.source == "domain"}),
    }
    rows = await warehouse.rows(chain_sql(steps, parameters, sample), parameters)
    found = {int(step): (int(n), float(median)) for step, n, median in rows}
    share = 1.0 if sample is None else sample / SAMPLES
    results: list[StepResult] = []
    previous = 0
    for k, step in enumerate(steps, start=1):
        seen, median = found.get(k, (0, 0.0))
        count = round(seen / share)
        results.append(
            StepResult(
                step=step.name,
                count=count,
                drop_off=previous - count if k > 1 else 0,
                median_seconds_from_previous=(round(median / 1000, 3) if k > 1 and seen else None),
                margin=msgspec.UNSET if sample is None else _margin(seen, share),
            )
        )
        previous = count
    return Followed(results, share)


def _margin(seen: int, share: float) -> int:
    """95% half-width of seen / share: each visitor is in the sample with probability `share`
    (a hash of its id), so seen is binomial, its variance estimated as (seen + 1) * (1 - share):
    the one more keeps a margin where few or none were seen."""
    return math.ceil(1.96 * math.sqrt((seen + 1) * (1 - share)) / share)
