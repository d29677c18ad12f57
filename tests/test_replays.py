"""A batch inserted again under its token (a retry whose first attempt landed, the tracking
log replayed after a crash, a retry after one view failed) is counted once: by its source
table and by every materialized view over it, cascades included (sql/0031). Rebuilds that
insert the same rows again on purpose are not taken for replays.

Merges are stopped in these databases, so every table's row count shows every insert it took.
"""

import re
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from cli.demo_traffic import Traffic, generate
from consumers.mapping import DomainRow
from core.clickhouse import Warehouse, WarehouseError
from materialized import rollup_rebuild
from tracked.row import TrackingRow

START = datetime(2026, 10, 24, tzinfo=UTC)  # across the October clock change
SOURCES = {"tracking_events": TrackingRow, "analytics_events": DomainRow}
# Touched again by every replay (a max of the clock): a seal made meanwhile must not count.
TOUCHES = "stats_session_touches"
_TARGET = re.compile(r" TO (?:`?\w+`?\.)?`?(\w+)`?")
_SOURCE = re.compile(r" FROM (?:`?\w+`?\.)?`?(\w+)`?")


async def stop_merges(warehouse: Warehouse) -> None:
    for (name,) in await warehouse.rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND engine LIKE '%MergeTree'"
    ):
        await warehouse.command(f"SYSTEM STOP MERGES `{warehouse.database}`.`{name}`")


async def row_counts(warehouse: Warehouse) -> dict[str, int]:
    """Every table's rows (parts as inserted: merges are stopped), but the touches'."""
    names = await warehouse.rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND engine LIKE '%MergeTree' AND name != {touches:String} ORDER BY name",
        {"touches": TOUCHES},
    )
    return {name: int(await warehouse.scalar(f"SELECT count() FROM {name}")) for (name,) in names}


async def touches(warehouse: Warehouse) -> int:
    return int(await warehouse.scalar(f"SELECT count() FROM {TOUCHES}"))


async def view_targets(warehouse: Warehouse) -> dict[str, str]:
    """Each view's target table -> the table the view reads (a source or another target)."""
    found: dict[str, str] = {}
    for create, select in await warehouse.rows(
        "SELECT create_table_query, as_select FROM system.tables"
        " WHERE database = currentDatabase() AND engine = 'MaterializedView'"
    ):
        target, source = _TARGET.search(str(create)), _SOURCE.search(str(select))
        assert target is not None and source is not None, create
        found[target.group(1)] = source.group(1)
    return found


def root(targets: dict[str, str], table: str) -> str:
    while table in targets:
        table = targets[table]
    return table


def lines(rows: list[TrackingRow] | list[DomainRow]) -> bytes:
    return msgspec.json.Encoder().encode_lines(rows)


def rows_of(traffic: Traffic, source: str) -> list[TrackingRow] | list[DomainRow]:
    return traffic.tracking if source == "tracking_events" else traffic.domain


async def insert(warehouse: Warehouse, source: str, data: bytes, token: str) -> None:
    columns = SOURCES[source].__struct_fields__
    await warehouse.insert_lines(source, columns, data, dedup_token=token)


@pytest.fixture
async def still(warehouse: Warehouse) -> Warehouse:
    await stop_merges(warehouse)
    return warehouse


@pytest.fixture
async def reference(fresh: Warehouse) -> Warehouse:
    """A second database of the same schema, for each batch inserted once, cleanly."""
    await stop_merges(fresh)
    return fresh


async def test_a_batch_replayed_under_its_token_is_counted_once_by_every_view(
    still: Warehouse,
) -> None:
    traffic = generate(START, days=2, sessions_per_day=40, seed=3)
    targets = await view_targets(still)
    for source in SOURCES:
        await insert(still, source, lines(rows_of(traffic, source)), f"{source}:1")
    once, touched = await row_counts(still), await touches(still)
    # Every view took the batch, so a second copy anywhere would show.
    assert not [t for t in targets if t != TOUCHES and once[t] == 0], once
    for source in SOURCES:
        await insert(still, source, lines(rows_of(traffic, source)), f"{source}:1")
        await insert(still, source, lines(rows_of(traffic, source)), f"{source}:1")
    assert await row_counts(still) == once
    assert await touches(still) == 3 * touched > 0  # the first insert, then each replay
    # Under a new token the same rows are a new batch, in the source and in every view.
    for source in SOURCES:
        await insert(still, source, lines(rows_of(traffic, source)), f"{source}:2")
    again = await row_counts(still)
    assert [t for t in [*SOURCES, *targets] if t != TOUCHES and again[t] == once[t]] == []


async def test_a_view_that_failed_after_its_source_stored_is_filled_by_the_retry_alone(
    still: Warehouse, reference: Warehouse
) -> None:
    """For each view in turn: its target refuses the batch after the source (and the views
    before it) stored it, then takes writes again; the retry under the same token fills that
    view and leaves the rest as one clean insert of the batch leaves them."""
    targets = await view_targets(still)
    for seed, target in enumerate(sorted(set(targets) - {TOUCHES})):
        source = root(targets, target)
        data = lines(rows_of(generate(START, days=1, sessions_per_day=30, seed=seed), source))
        token = uuid.uuid4().hex
        before = await row_counts(still)
        await still.command(f"ALTER TABLE {target} ADD CONSTRAINT refused CHECK 0")
        with pytest.raises(WarehouseError, match="refused"):
            await insert(still, source, data, token)
        failed = await row_counts(still)
        assert failed[source] > before[source], f"{target}: the source did not store first"
        assert failed[target] == before[target]
        await still.command(f"ALTER TABLE {target} DROP CONSTRAINT refused")
        await insert(still, source, data, token)
        retried = await row_counts(still)

        clean_before = await row_counts(reference)
        await insert(reference, source, data, uuid.uuid4().hex)
        clean = await row_counts(reference)
        assert clean[target] > clean_before[target], f"the batch gives {target} nothing"
        assert {t: retried[t] - before[t] for t in retried} == {
            t: clean[t] - clean_before[t] for t in clean
        }, target


async def test_a_rebuild_run_twice_keeps_its_rows(warehouse: Warehouse) -> None:
    """A rebuild deletes its hours and inserts them again; run again (an erasure resumed) it
    inserts the same rows, which the targets must not drop as a replayed block."""
    traffic = generate(START, days=1, sessions_per_day=30, seed=5)
    for source in SOURCES:
        await insert(warehouse, source, lines(rows_of(traffic, source)), uuid.uuid4().hex)
    totals = (
        "SELECT (SELECT sum(events) FROM tracking_events_hourly),"
        " (SELECT sum(pageviews) FROM stats_hourly WHERE dimension = ''),"
        " (SELECT sum(pageviews) FROM stats_daily WHERE dimension = ''),"
        " (SELECT sum(events) FROM domain_events_hourly)"
    )
    built = await warehouse.rows(totals)
    hours = sorted(
        {r.received_at.replace(minute=0, second=0, microsecond=0) for r in traffic.tracking}
    )
    views = rollup_rebuild.TRACKING_ROLLUPS + rollup_rebuild.DOMAIN_ROLLUPS
    for _ in range(2):
        await rollup_rebuild.rebuild(warehouse, views, hours)
        assert await warehouse.rows(totals) == built
