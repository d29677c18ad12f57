"""Hourly rollups recomputed for chosen hours from the rows that remain: what an erasure does
to the counts a user's rows went into (materialized/erasure.py).

A rollup's own materialized view says how it is computed: its SELECT (`system.tables`) is
run again over the hours' rows, with its source table swapped for those rows, after the
hours' rollup rows are deleted. So the rebuild cannot drift from the view. `stats_daily`
sums `stats_hourly` as it is inserted: its days holding a rebuilt hour are deleted first,
then refilled by the rebuilt hours' inserts (its view) and from the untouched hours of those
days. Every step is idempotent: a rebuild cut short and run again gives the same rows.

A rebuild must not meet inserts into the same hours (an event stored between the delete and
the select would count twice), so erasures rebuild only hours that have ended
(materialized/erasure.py waits for the current one).
"""

from __future__ import annotations

import re
from datetime import datetime

from core.clickhouse import Warehouse

# The views of hourly counts over the raw events (rebuilt from what remains) and over the
# domain events; each target's hour column is `hour`, the start of the source row's hour.
TRACKING_ROLLUPS = (
    "tracking_events_hourly_mv",
    "blog_views_hourly_mv",
    "product_views_hourly_mv",
    "stats_hourly_mv",
    "stats_audience_hourly_mv",
)
DOMAIN_ROLLUPS = ("domain_events_hourly_mv",)
# The view that sums a rebuilt rollup per UTC day, and the rollup it sums.
DAILY = ("stats_daily_mv", "stats_hourly")
SOURCE_TIME = {"tracking_events": "received_at", "analytics_events": "occurred_at"}
_HOURS = "{hours:Array(DateTime('UTC'))}"
# The targets drop a block they already hold (sql/0031); a rebuild run again after its delete
# inserts the same rows on purpose.
_FRESH = "SETTINGS insert_deduplicate = 0"


class ViewError(RuntimeError):
    """A view whose definition is not what a rebuild can replay."""


async def _definition(warehouse: Warehouse, view: str) -> tuple[str, str, str]:
    """(target table, source table, SELECT) of a materialized view."""
    rows = await warehouse.rows(
        "SELECT as_select, create_table_query FROM system.tables"
        " WHERE database = currentDatabase() AND name = {view:String}",
        {"view": view},
    )
    if not rows:
        raise ViewError(f"no view {view}")
    select, create = str(rows[0][0]), str(rows[0][1])
    target = re.search(r" TO (?:\w+\.)?(\w+)", create)
    source = re.search(r" FROM (\w+\.)?(\w+)", select)
    if target is None or source is None:
        raise ViewError(f"{view}: cannot read its target or source")
    return target.group(1), source.group(2), select


def _replayed(select: str, source: str, rows: str) -> str:
    """The view's SELECT over `rows` (a subquery) instead of its source table."""
    found = re.search(rf" FROM (\w+\.)?{source}\b", select)
    if found is None:
        raise ViewError(f"the view does not read {source}")
    return f"{select[: found.start()]} FROM ({rows}){select[found.end() :]}"


async def rebuild(
    warehouse: Warehouse, views: tuple[str, ...], hours: list[datetime], replay_from: str = ""
) -> None:
    """Recompute `views`' targets for `hours` from their source rows of those hours, or, with
    `replay_from`, from that table's rows (an archived day loaded back: the raw rows are gone)."""
    if not hours:
        return
    parameters = {"hours": sorted(hours)}
    daily_view, daily_source = DAILY
    definitions = [await _definition(warehouse, view) for view in views]
    targets = {target for target, _, _ in definitions}
    if daily_source in targets:
        await warehouse.delete_where(
            "stats_daily",
            f"day IN (SELECT DISTINCT toStartOfDay(arrayJoin({_HOURS})))",
            parameters,
        )
    for target, source, select in definitions:
        time = SOURCE_TIME[source]
        rows = (
            f"SELECT * FROM {replay_from or source}"
            f" WHERE toStartOfHour({time}) IN (SELECT arrayJoin({_HOURS}))"
        )
        await warehouse.delete_where(target, f"hour IN (SELECT arrayJoin({_HOURS}))", parameters)
        # Inserting into stats_hourly refills stats_daily for these hours through its view.
        await warehouse.command(
            f"INSERT INTO {target} {_FRESH} {_replayed(select, source, rows)}", parameters
        )
    if daily_source in targets:
        _, source, select = await _definition(warehouse, daily_view)
        untouched = (
            f"SELECT * FROM {daily_source}"
            f" WHERE toStartOfDay(hour) IN (SELECT DISTINCT toStartOfDay(arrayJoin({_HOURS})))"
            f" AND hour NOT IN (SELECT arrayJoin({_HOURS}))"
        )
        await warehouse.command(
            f"INSERT INTO stats_daily {_FRESH} {_replayed(select, source, untouched)}",
            parameters,
        )
