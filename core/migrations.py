"""Applies `sql/NNNN_what.sql` in order, once each, and refuses files edited after they ran."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from core.clickhouse import Warehouse, WarehouseError
from core.cluster_ddl import ClusterDDL, ClusterRenderError
from core.settings import Settings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migration files and the database disagree; nothing further was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, cluster: str = "", database: str = "") -> list[str]:
        """The statements to run: as written on one server; on a cluster, each rendered as
        local replicated tables and Distributed tables over them (core/cluster_ddl.py)."""
        if not cluster:
            plain = self.text.replace("${ON_CLUSTER}", "").replace("${REPLICATED}", "")
            return split_statements(plain)
        ddl = ClusterDDL(cluster, database)
        return [
            rendered
            for statement in split_statements(self.text)
            for rendered in ddl.render(statement, self.name)
        ]


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_what.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return migrations


def split_statements(sql: str) -> list[str]:
    """Split on `;` outside quotes and comments (the HTTP interface takes one statement a call)."""
    statements: list[str] = []
    current: list[str] = []
    i, quote = 0, ""
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
            current.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end == -1 else end
            continue
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


async def applied_checksums(warehouse: Warehouse) -> dict[int, tuple[str, str]]:
    exists = await warehouse.scalar(
        "SELECT count() FROM system.tables WHERE database = currentDatabase()"
        " AND name = 'schema_migrations'"
    )
    if not exists:
        return {}
    rows = await warehouse.rows("SELECT version, name, checksum FROM schema_migrations FINAL")
    return {int(v): (str(n), str(c)) for v, n, c in rows}


_REMOVE_TTL = re.compile(r"\bREMOVE\s+TTL\s*$", re.I)


async def _apply(warehouse: Warehouse, statement: str) -> None:
    """Every other statement is written to run twice (IF [NOT] EXISTS); REMOVE TTL has no such
    form, and a re-run after a crash between a migration's statements (or a TTL removed by
    hand) finds none to remove: the state the statement wants, so not an error."""
    try:
        await warehouse.command(statement)
    except WarehouseError as error:
        if not (_REMOVE_TTL.search(statement) and "doesn't have any table TTL" in str(error)):
            raise


async def migrate(
    warehouse: Warehouse, *, cluster: str = "", directory: Path = SQL_DIR
) -> list[str]:
    """Apply pending migrations in order; returns the names applied (empty when up to date)."""
    migrations = load_migrations(directory)
    applied = await applied_checksums(warehouse)
    known = {m.version for m in migrations}
    for version, (name, _) in sorted(applied.items()):
        if version not in known:
            raise MigrationError(f"{name} was applied but its file is gone from {directory}")
    for migration in migrations:
        if migration.version in applied and applied[migration.version][1] != migration.checksum:
            raise MigrationError(
                f"{migration.name} was edited after it was applied (checksum "
                f"{applied[migration.version][1][:12]}… in the database, "
                f"{migration.checksum[:12]}… on disk); put the change in a new migration"
            )
    try:  # every pending statement rendered before any runs
        pending = [
            (migration, migration.statements(cluster, warehouse.database))
            for migration in migrations
            if migration.version not in applied
        ]
    except ClusterRenderError as error:
        raise MigrationError(str(error)) from None
    done: list[str] = []
    for migration, statements in pending:
        for statement in statements:
            await _apply(warehouse, statement)
        await warehouse.command(
            "INSERT INTO schema_migrations (version, name, checksum)"
            " VALUES ({version:UInt32}, {name:String}, {checksum:String})",
            {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
        )
        done.append(migration.name)
    return done


async def open_migrated(settings: Settings) -> tuple[Warehouse, list[str]]:
    """The database of `settings`, created when missing and migrated; with what was applied."""
    warehouse = Warehouse(
        settings.clickhouse_url, settings.clickhouse_database, cluster=settings.clickhouse_cluster
    )
    try:
        await warehouse.open()
        applied = await migrate(warehouse, cluster=settings.clickhouse_cluster)
    except BaseException:
        await warehouse.close()
        raise
    return warehouse, applied
