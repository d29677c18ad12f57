"""Event properties as questions: the keys seen in a range, and `prop:KEY` as a breakdown
dimension and a filter of the stats (materialized/stats.py).

Properties are read from the raw events, never rolled up. Their keys and values are the
client's to choose (up to 8 KiB of JSON an event, ingest/schema.py), so a rollup keyed by
them would grow with whatever a client invents, not with the questions asked; the raw read
is bounded instead by the range (at most 400 days), the query timeout and the `properties
!= '{}'` skip of the events that carry none.

A property's value, as breakdowns show it and filters match it: a string's text; a number
as ClickHouse writes it, the shortest form that reads back the same (`1.50` is `1.5`, `1e3`
is `1000`, so the string "5" and the number 5 are one value); `true` or `false`. A null, an
object or an array is no value: the event counts among the key's events in the key list but
in no row of the key's breakdown. A key given twice in one event is read at its first; the
empty key is neither listed nor asked (`prop:` needs a key).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from core.clickhouse import Warehouse

PREFIX = "prop:"
MAX_KEY_CHARS = 512
MAX_KEYS = 1000
SCALAR = "('String', 'Int64', 'UInt64', 'Double', 'Bool')"


class PropertyKey(msgspec.Struct):
    key: str
    events: int  # events in the range carrying the key


class PropertyKeys(msgspec.Struct):
    keys: list[PropertyKey]  # most used first


class DimensionError(ValueError):
    """A `prop:KEY` dimension that cannot be asked; the message says why."""


def key_of(dimension: str) -> str | None:
    """The key of a `prop:KEY` dimension; None for any other dimension."""
    if not dimension.startswith(PREFIX):
        return None
    key = dimension[len(PREFIX) :]
    if not key:
        raise DimensionError("`prop:` needs a key: `prop:KEY`")
    if len(key) > MAX_KEY_CHARS:
        raise DimensionError(f"a property key is at most {MAX_KEY_CHARS} characters")
    return key


def value_sql(key_parameter: str) -> str:
    """The value of the key named by query parameter `key_parameter` in an event's properties,
    NULL when it is missing or not a scalar."""
    key = f"{{{key_parameter}:String}}"
    return (
        f"if(JSONType(properties, {key}) IN {SCALAR}, JSONExtractString(properties, {key}), NULL)"
    )


async def keys(
    warehouse: Warehouse, start: datetime, end: datetime, event_type: str | None, limit: int
) -> PropertyKeys:
    """The keys of the properties of browser events (bots excluded) received in [start, end),
    of `event_type` when given, by the number of events carrying each."""
    rows = await warehouse.rows(
        "SELECT key, count() AS events FROM tracking_events"
        " ARRAY JOIN arrayDistinct(JSONExtractKeys(properties)) AS key"
        " WHERE NOT is_bot AND properties != '{}' AND key != ''"
        " AND received_at >= {start:DateTime('UTC')} AND received_at < {end:DateTime('UTC')}"
        + (" AND event_type = {event_type:String}" if event_type else "")
        + " GROUP BY key ORDER BY events DESC, key LIMIT {limit:UInt32}",
        {"start": start, "end": end, "event_type": event_type or "", "limit": limit},
    )
    return PropertyKeys([PropertyKey(str(key), int(events)) for key, events in rows])
