"""Migrations rendered for a ClickHouse cluster (CLICKHOUSE_CLUSTER). No ClickHouse server or
Keeper runs here, so every rendered statement is checked by ClickHouse's own parser
(`formatQuery` on chDB) and for its shape; docs/scale-out.md says what was not exercised."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.clickhouse import Warehouse, delete_statement
from core.cluster_ddl import SHARD_KEYS, ClusterDDL
from core.migrations import MigrationError, load_migrations, migrate

CLUSTER, DATABASE = "analytics", "lomash"


def rendered() -> list[tuple[str, str]]:
    return [
        (migration.name, statement)
        for migration in load_migrations()
        for statement in migration.statements(CLUSTER, DATABASE)
    ]


def plain_tables() -> set[str]:
    return {
        match.group(1)
        for migration in load_migrations()
        for statement in migration.statements()
        if (match := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement))
    }


async def test_every_cluster_statement_parses_in_clickhouse(warehouse: Warehouse) -> None:
    for name, statement in rendered():
        formatted = await warehouse.scalar("SELECT formatQuery({sql:String})", {"sql": statement})
        assert formatted, (name, statement)
        if statement.startswith("INSERT"):  # a backfill: once, through the Distributed tables
            assert "_local" not in statement and f"ON CLUSTER {CLUSTER}" not in formatted
            continue
        assert f"ON CLUSTER {CLUSTER}" in formatted, (name, formatted)


def test_a_backfill_runs_once_through_the_distributed_tables_its_set_sent_to_every_shard() -> None:
    visitors, audiences = [s for name, s in rendered() if s.startswith("INSERT")]
    assert visitors.startswith(f"INSERT INTO `{DATABASE}`.`visitor_events`\nSELECT")
    assert f"FROM `{DATABASE}`.`tracking_events`" in visitors
    assert (
        f"event_id GLOBAL NOT IN (SELECT event_id FROM `{DATABASE}`.`visitor_events`)" in visitors
    )
    assert audiences.startswith(f"INSERT INTO `{DATABASE}`.`stats_audience_hourly`\nSELECT")
    assert f"FROM `{DATABASE}`.`stats_pages`" in audiences
    assert (
        "toYYYYMM(hour) GLOBAL NOT IN (SELECT DISTINCT toYYYYMM(hour)"
        f" FROM `{DATABASE}`.`stats_audience_hourly`)" in audiences
    )


def test_every_table_is_replicated_locals_under_a_distributed_table() -> None:
    statements = [s for _, s in rendered()]
    for table in plain_tables():
        local = f"`{DATABASE}`.`{table}_local`"
        (create_local,) = [
            s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {local}")
        ]
        assert re.search(
            r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/", create_local
        )
        assert f"/{DATABASE}/{table}_local', '{{replica}}'" in create_local
        (create_distributed,) = [
            s
            for s in statements
            if s.startswith(f"CREATE TABLE IF NOT EXISTS `{DATABASE}`.`{table}` ")
        ]
        assert create_distributed.endswith(
            f"ENGINE = Distributed(`{CLUSTER}`, `{DATABASE}`, `{table}_local`, {SHARD_KEYS[table]})"
        )
    assert set(SHARD_KEYS) == plain_tables()  # every table's shard key was chosen, none stale
    assert SHARD_KEYS["tracking_events"] == "cityHash64(session_id)"


def test_engine_arguments_follow_the_replication_path() -> None:
    statements = dict.fromkeys(s for _, s in rendered())
    summing = next(
        s for s in statements if "`domain_events_hourly_local` ON CLUSTER" in s and "CREATE" in s
    )
    assert (
        "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/lomash/"
        "domain_events_hourly_local', '{replica}', (events, amount))" in summing
    )
    restored = next(
        s
        for s in statements
        if s.startswith("CREATE TABLE IF NOT EXISTS `lomash`.`tracking_events_restored_local`")
    )
    assert "AS `lomash`.`tracking_events_local`" in restored


def test_views_read_and_write_each_nodes_local_tables() -> None:
    views = [s for _, s in rendered() if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == len(
        [
            s
            for m in load_migrations()
            for s in m.statements()
            if s.startswith("CREATE MATERIALIZED VIEW")
        ]
    )
    for view in views:
        target = re.search(r"\nTO (\S+)", view)
        assert target and target.group(1).endswith("_local`"), view
        sources = re.findall(r"\bFROM\s+(\S+)", view)
        assert sources and all(s.endswith("_local`") for s in sources), view


def test_alters_reach_the_distributed_table_only_for_columns() -> None:
    by_file: dict[str, list[str]] = {}
    for name, statement in rendered():
        by_file.setdefault(name, []).append(statement)
    added = by_file["0003_tracking_events_occurred_at.sql"]
    assert [s.split(" ON CLUSTER")[0] for s in added] == [
        "ALTER TABLE `lomash`.`tracking_events_local`",
        "ALTER TABLE `lomash`.`tracking_events`",
    ]
    funnels = by_file["0016_funnels_kept_with_ids.sql"]
    assert [s for s in funnels if "REMOVE TTL" in s] == [
        "ALTER TABLE `lomash`.`funnels_local` ON CLUSTER `analytics` REMOVE TTL"
    ]


def test_a_statement_shape_without_a_cluster_rendering_is_refused() -> None:
    with pytest.raises(Exception, match=r"0099_x\.sql: no cluster rendering"):
        ClusterDDL(CLUSTER, DATABASE).render("RENAME TABLE a TO b", "0099_x.sql")
    with pytest.raises(Exception, match="no shard key"):
        ClusterDDL(CLUSTER, DATABASE).render(
            "CREATE TABLE IF NOT EXISTS newcomer ${ON_CLUSTER} (a UInt8)"
            " ENGINE = ${REPLICATED}MergeTree ORDER BY a"
        )


async def test_migrate_refuses_before_running_anything(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "0001_ok.sql").write_text(
        "CREATE TABLE IF NOT EXISTS schema_migrations ${ON_CLUSTER}"
        " (version UInt32, name String, checksum String)"
        " ENGINE = ${REPLICATED}ReplacingMergeTree ORDER BY version;"
    )
    (sql / "0002_odd.sql").write_text("OPTIMIZE TABLE schema_migrations FINAL;")
    warehouse = Warehouse(settings.clickhouse_url, f"{settings.clickhouse_database}_c")
    await warehouse.open()
    try:
        with pytest.raises(MigrationError, match=r"0002_odd\.sql"):
            await migrate(warehouse, cluster=CLUSTER, directory=sql)
        assert (
            await warehouse.scalar(
                "SELECT count() FROM system.tables WHERE database = currentDatabase()"
            )
            == 0
        )
    finally:
        await warehouse.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}_c` SYNC")
        await warehouse.close()


async def test_deletes_go_to_every_shards_local_table(warehouse: Warehouse) -> None:
    condition = "toDate(received_at) = {day:Date}"
    on_cluster = delete_statement("tracking_events", condition, CLUSTER)
    assert on_cluster.startswith("DELETE FROM `tracking_events_local` ON CLUSTER `analytics`")
    for statement in (on_cluster, delete_statement("tracking_events", condition)):
        parsed = await warehouse.scalar("SELECT formatQuery({sql:String})", {"sql": statement})
        assert parsed.startswith("DELETE FROM tracking_events")
