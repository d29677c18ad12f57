import asyncio
import shutil
from pathlib import Path

import pytest

from core.clickhouse import Warehouse
from core.migrations import (
    SQL_DIR,
    MigrationError,
    load_migrations,
    migrate,
    split_statements,
)
from tests.conftest import read_schema


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, copy)
    return copy


@pytest.fixture
async def empty_warehouse(settings) -> Warehouse:  # type: ignore[no-untyped-def]
    wh = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
    await wh.open()
    yield wh
    await wh.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
    await wh.close()


async def test_fresh_database_gets_every_migration_in_order(empty_warehouse: Warehouse) -> None:
    applied = await migrate(empty_warehouse)
    assert applied == [m.name for m in load_migrations()]
    recorded = await empty_warehouse.rows(
        "SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version"
    )
    assert [(v, n, c) for v, n, c in recorded] == [
        (m.version, m.name, m.checksum) for m in load_migrations()
    ]
    engine, sorting_key, partition_key = (
        await empty_warehouse.rows(
            "SELECT engine, sorting_key, partition_key"
            " FROM system.tables WHERE database = currentDatabase() AND name = 'tracking_events'"
        )
    )[0]
    assert engine == "MergeTree"
    assert sorting_key.startswith("event_type, received_at")
    assert partition_key == "toYYYYMM(received_at)"


async def test_running_again_changes_nothing(empty_warehouse: Warehouse) -> None:
    await migrate(empty_warehouse)
    assert await migrate(empty_warehouse) == []
    assert await empty_warehouse.scalar("SELECT count() FROM schema_migrations") == len(
        load_migrations()
    )


async def test_a_new_file_is_applied_after_the_old_ones(
    empty_warehouse: Warehouse, sql_dir: Path
) -> None:
    await migrate(empty_warehouse, directory=sql_dir)
    (sql_dir / "9000_extra.sql").write_text(
        "-- a test table\nCREATE TABLE extra (a UInt8, s String DEFAULT 'x;y') "
        "ENGINE = MergeTree ORDER BY a;\nINSERT INTO extra (a) VALUES (7);\n"
    )
    assert await migrate(empty_warehouse, directory=sql_dir) == ["9000_extra.sql"]
    assert await empty_warehouse.rows("SELECT a, s FROM extra") == [(7, "x;y")]


async def test_an_edited_applied_file_is_refused(empty_warehouse: Warehouse, sql_dir: Path) -> None:
    await migrate(empty_warehouse, directory=sql_dir)
    target = sql_dir / "0002_tracking_events.sql"
    target.write_text(target.read_text().replace("90 DAY", "30 DAY"))
    (sql_dir / "9000_extra.sql").write_text("CREATE TABLE extra (a UInt8) ENGINE = Log;")
    with pytest.raises(MigrationError, match=r"0002_tracking_events\.sql was edited after it was"):
        await migrate(empty_warehouse, directory=sql_dir)
    # Nothing after the refusal ran.
    assert not await empty_warehouse.scalar(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'extra'"
    )


async def test_an_applied_file_that_disappeared_is_refused(
    empty_warehouse: Warehouse, sql_dir: Path
) -> None:
    await migrate(empty_warehouse, directory=sql_dir)
    (sql_dir / "0002_tracking_events.sql").unlink()
    with pytest.raises(MigrationError, match=r"its file is gone"):
        await migrate(empty_warehouse, directory=sql_dir)


def test_badly_named_file_is_refused(sql_dir: Path) -> None:
    (sql_dir / "add-things.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_what\.sql"):
        load_migrations(sql_dir)


def test_statements_split_outside_strings_and_comments() -> None:
    sql = "-- header; with a semicolon\nCREATE TABLE a (s String DEFAULT 'a;b');\n\nSELECT ';' ;"
    assert split_statements(sql) == ["CREATE TABLE a (s String DEFAULT 'a;b')", "SELECT ';'"]


async def test_no_ttl_deletes_raw_events_or_aggregates(warehouse: Warehouse) -> None:
    """Raw days leave only through the verified purge; aggregates are kept indefinitely.
    Only the snapshots (a cache of computed dashboards) expire."""
    found = await warehouse.rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()"
        " AND create_table_query LIKE '% TTL %' ORDER BY name"
    )
    assert [r[0] for r in found] == ["dashboard_snapshots"]


async def test_a_migration_interrupted_after_removing_a_ttl_runs_again(
    empty_warehouse: Warehouse,
) -> None:
    """A crash between two statements of one migration: the first ran, the ledger has no row.
    REMOVE TTL has no IF EXISTS form; running it again must not stop every later start."""
    await migrate(empty_warehouse)
    await empty_warehouse.command("ALTER TABLE schema_migrations DELETE WHERE version = 24")
    await empty_warehouse.command("OPTIMIZE TABLE schema_migrations FINAL")
    assert "0024_stats_rollups_kept.sql" in await migrate(empty_warehouse)


async def test_the_tests_copy_of_the_schema_is_the_migrated_database(
    warehouse: Warehouse, database: str
) -> None:
    """The `warehouse` fixture creates the schema read from a migrated template instead of
    migrating each test's database: both must hold the same tables, views and ledger."""
    fresh = Warehouse(warehouse.url, f"{database}_migrated")
    await fresh.open()
    try:
        await migrate(fresh)
        migrated, copied = await read_schema(fresh), await read_schema(warehouse)
    finally:
        await fresh.command(f"DROP DATABASE `{fresh.database}` SYNC")
        await fresh.close()
    assert len(copied.creates) == len(migrated.creates) > 20
    for mine, theirs in zip(copied.creates, migrated.creates, strict=True):
        assert mine.replace(f"{warehouse.database}.", "") == theirs.replace(
            f"{fresh.database}.", ""
        )
    assert copied.ledger == migrated.ledger
    assert await migrate(warehouse) == []


async def set_aside(sql_dir: Path, first: str) -> list[str]:
    """Move migration `first` and every later one out of `sql_dir`; their names, in order."""
    names = await asyncio.to_thread(lambda: [p.name for p in sql_dir.glob("*.sql")])
    later = sorted(name for name in names if name >= first)
    for name in later:
        (sql_dir / name).rename(sql_dir.parent / name)
    return later


def put_back(sql_dir: Path, names: list[str]) -> None:
    for name in names:
        (sql_dir.parent / name).rename(sql_dir / name)


async def test_the_funnels_visitor_copy_takes_the_events_stored_before_it_once(
    empty_warehouse: Warehouse, sql_dir: Path
) -> None:
    """0030 adds visitor_events (a view from tracking_events): the events already stored are
    copied into it, bots left out, and applying it again after a cut copies none twice."""
    later = await set_aside(sql_dir, "0030")  # and the migrations after it, naming its table
    await migrate(empty_warehouse, directory=sql_dir)
    await empty_warehouse.command(
        "INSERT INTO tracking_events (event_id, event_type, session_id, user_id, received_at,"
        " occurred_at, url, is_bot) SELECT generateUUIDv4(number), 'PAGEVIEW',"
        " generateUUIDv4(number + 1000), if(number % 2 = 0, generateUUIDv4(number + 2000), NULL),"
        " now64(3), now64(3), 'https://www.lomashwood.co.uk/kitchens', number % 10 = 0"
        " FROM numbers(100)"
    )
    put_back(sql_dir, later)
    assert await migrate(empty_warehouse, directory=sql_dir) == later
    # Cut after the copy, before the ledger row: the next start applies it all again.
    await empty_warehouse.command("ALTER TABLE schema_migrations DELETE WHERE version = 30")
    await empty_warehouse.command("OPTIMIZE TABLE schema_migrations FINAL")
    assert await migrate(empty_warehouse, directory=sql_dir) == ["0030_visitor_events.sql"]
    copied = await empty_warehouse.rows(
        "SELECT count(), uniqExact(event_id), countIf(visitor = ifNull(user, session)) FROM"
        " visitor_events AS v INNER JOIN (SELECT event_id, user_id AS user, session_id AS session"
        " FROM tracking_events WHERE NOT is_bot) AS t USING event_id"
    )
    assert copied == [(90, 90, 90)]
    # Events stored from now on reach it through the view.
    await empty_warehouse.command(
        "INSERT INTO tracking_events (event_id, event_type, session_id, received_at, occurred_at,"
        " url) VALUES (generateUUIDv4(), 'CLICK', generateUUIDv4(), now64(3), now64(3), '')"
    )
    assert await empty_warehouse.rows("SELECT count() FROM visitor_events") == [(91,)]


async def test_the_audience_rollup_takes_the_events_stored_before_it_once(
    empty_warehouse: Warehouse, sql_dir: Path
) -> None:
    """0032 adds stats_audience_hourly (a view from tracking_events): the events already
    stored, over two months, are summed into it, bots left out, also those of a day the raw
    table no longer holds (purged: stats_pages keeps them); applied again after a cut it adds
    nothing; events stored from then on reach it through the view."""
    later = await set_aside(sql_dir, "0032")
    await migrate(empty_warehouse, directory=sql_dir)
    await empty_warehouse.command(
        "INSERT INTO tracking_events (event_id, event_type, session_id, user_id, received_at,"
        " occurred_at, url, is_bot, country, device_type) SELECT generateUUIDv4(number),"
        " if(number % 3 = 0, 'CLICK', 'PAGEVIEW'), generateUUIDv4(number % 40),"
        " if(number % 4 = 0, generateUUIDv4(number % 7 + 1000), NULL),"
        " toDateTime64('2026-09-30 20:00:00', 3, 'UTC') + toIntervalHour(number % 9),"
        " toDateTime64('2026-09-30 20:00:00', 3, 'UTC'), 'https://www.lomashwood.co.uk/',"
        " number % 10 = 0, ['GB', 'IE'][number % 2 + 1], ['mobile', 'desktop'][number % 5 % 2 + 1]"
        " FROM numbers(200)"
    )
    raw = (
        "SELECT toString(toStartOfHour(received_at)) AS h, country AS c, device_type AS d,"
        " countIf(event_type = 'PAGEVIEW'), uniqExact(ifNull(user_id, session_id))"
        " FROM tracking_events WHERE NOT is_bot GROUP BY h, c, d ORDER BY ALL"
    )
    expected = await empty_warehouse.rows(raw)
    assert {h[:7] for h, *_ in expected} == {"2026-09", "2026-10"}
    # The September day purged from the raw table before the migration runs.
    await empty_warehouse.command(
        "DELETE FROM tracking_events WHERE toYYYYMM(received_at) = 202609"
    )
    put_back(sql_dir, later)
    assert await migrate(empty_warehouse, directory=sql_dir) == later
    rollup = (
        "SELECT toString(hour), country, device_type, sum(pageviews),"
        " uniqCombined64Merge(12)(visitors) FROM stats_audience_hourly"
        " GROUP BY hour, country, device_type ORDER BY ALL"
    )
    assert await empty_warehouse.rows(rollup) == expected
    # Cut after the copy, before the ledger row: the next start applies it all again.
    await empty_warehouse.command("ALTER TABLE schema_migrations DELETE WHERE version = 32")
    await empty_warehouse.command("OPTIMIZE TABLE schema_migrations FINAL")
    assert await migrate(empty_warehouse, directory=sql_dir) == ["0032_stats_audience_hourly.sql"]
    assert await empty_warehouse.rows(rollup) == expected
    await empty_warehouse.command(
        "INSERT INTO tracking_events (event_id, event_type, session_id, received_at, occurred_at,"
        " url, country, device_type) VALUES (generateUUIDv4(), 'PAGEVIEW', generateUUIDv4(),"
        " '2026-09-30 20:10:00', '2026-09-30 20:10:00', '', 'GB', 'mobile')"
    )
    assert await empty_warehouse.rows(
        "SELECT sum(pageviews) FROM stats_audience_hourly"
    ) == await empty_warehouse.rows("SELECT sum(pageviews) FROM stats_pages")
