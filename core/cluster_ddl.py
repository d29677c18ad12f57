"""Migrations rendered for a ClickHouse cluster (CLICKHOUSE_CLUSTER set).

On one server a migration's `${ON_CLUSTER}` and `${REPLICATED}` are left out. On a cluster
every table becomes two, created on every node (`ON CLUSTER`):

- `<name>_local`: the rows this shard holds, a `Replicated…MergeTree` kept in step between the
  shard's replicas through Keeper (path `/clickhouse/tables/{shard}/<db>/<name>_local`);
- `<name>`: a `Distributed` table over the locals of every shard, under the table's own name,
  so the service's queries and inserts read and write the whole cluster unchanged.

Materialized views are per node: each reads inserts into its node's `_local` source and
writes the node's `_local` target, so rollups are summed per shard and the reports' `sum()`
and `…Merge()` over the Distributed target combine the shards.

Only the statement shapes our migrations use are rendered; any other shape is refused with
the file's name, so a new migration cannot silently do the wrong thing on a cluster.
"""

from __future__ import annotations

import re

# How inserts through each Distributed table pick a shard. Rows that must meet in one
# shard's merges go to one shard: a session's events (tracking_events), an event's
# redeliveries (ReplacingMergeTree on event_id), an archived day's log rows, a migration's
# ledger row. The rollups and results are written only by the per-shard views or read back
# as a whole, so their key only spreads the few direct writes.
SHARD_KEYS = {
    "schema_migrations": "version",
    "tracking_events": "cityHash64(session_id)",
    "tracking_events_restored": "cityHash64(session_id)",
    "analytics_events": "cityHash64(event_id)",
    "domain_events_hourly": "rand()",
    "blog_views_hourly": "rand()",
    "tracking_events_hourly": "rand()",
    "product_views_hourly": "rand()",
    "customer_orders_hourly": "cityHash64(customer_id)",
    "customer_first_order": "cityHash64(customer_id)",
    "funnels": "rand()",
    # A name's versions meet in one shard's merges.
    "funnel_definitions": "cityHash64(name)",
    # An erasure's versions meet in one shard's merges.
    "erasures": "cityHash64(erasure_id)",
    "ingest_hourly": "rand()",
    "dashboard_snapshots": "rand()",
    "archive_log": "cityHash64(table_name, day)",
    "stats_hourly": "rand()",
    "stats_daily": "rand()",
    # A session's rows are written on the shard that holds its events (tracking_events' key).
    "stats_sessions": "cityHash64(session_id)",
    "stats_visits": "cityHash64(session_id)",
    "stats_pages": "cityHash64(session_id)",
    # An hour's seals meet in one shard's merges; touches are read as a max, anywhere.
    "stats_session_hours": "cityHash64(start_hour)",
    "stats_session_values": "cityHash64(start_hour)",
    "stats_session_audience": "cityHash64(start_hour)",
    "stats_session_journeys": "cityHash64(start_hour)",
    "stats_session_touches": "rand()",
    "stats_audience_hourly": "rand()",
    # Its view writes on the shard that holds the events (tracking_events' key), so a row its
    # backfill copies lands where the view would have put it.
    "visitor_events": "cityHash64(session_id)",
}

# ALTER actions a Distributed table takes too (its columns must match the locals'); the
# rest (TTL, settings, indexes) belong to the storage and go to the locals only.
_COLUMN_ACTION = re.compile(r"^\s*(ADD|MODIFY|DROP|RENAME|COMMENT)\s+COLUMN\b", re.I)

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<name>\w+) \$\{ON_CLUSTER\}\s*(?P<body>.*?)\s*"
    r"ENGINE = \$\{REPLICATED\}(?P<engine>\w+)(?P<rest>.*)$",
    re.S,
)
_CREATE_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<name>\w+) \$\{ON_CLUSTER\}\s*"
    r"TO (?P<target>\w+)\s+AS\s+(?P<select>SELECT\b.*)$",
    re.S,
)
_ALTER = re.compile(r"^ALTER TABLE (?P<name>\w+) \$\{ON_CLUSTER\}\s*(?P<actions>.*)$", re.S)
_DROP_VIEW = re.compile(r"^DROP VIEW IF EXISTS (?P<name>\w+) \$\{ON_CLUSTER\}\s*$")
# A one-off copy between tables (a backfill): run once, through the Distributed tables.
_INSERT_SELECT = re.compile(r"^INSERT INTO (?P<name>\w+)\s+SELECT\b.*$", re.S)
_SOURCE = re.compile(r"\b(FROM|JOIN)\s+(\w+)\b(?!\s*\()", re.I)
_AS_TABLE = re.compile(r"^AS (\w+)$")


class ClusterRenderError(Exception):
    """A migration statement has a shape the cluster rendering does not know."""


def _balanced_arguments(text: str) -> tuple[str, str]:
    """`(a, (b, c)) rest` → (`a, (b, c)`, ` rest`); no parenthesis → (``, text)."""
    if not text.startswith("("):
        return "", text
    depth = 0
    for at, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[1:at], text[at + 1 :]
    raise ClusterRenderError(f"unbalanced engine arguments in {text[:60]!r}")


def _has_top_level_comma(text: str) -> bool:
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'`\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif char == "," and depth == 0:
            return True
    return False


class ClusterDDL:
    def __init__(self, cluster: str, database: str) -> None:
        self.on_cluster = f"ON CLUSTER `{cluster}`"
        self.cluster = cluster
        self.database = database

    def _local(self, name: str) -> str:
        return f"`{self.database}`.`{name}_local`"

    def _table(self, name: str) -> str:
        return f"`{self.database}`.`{name}`"

    def render(self, statement: str, source: str = "") -> list[str]:
        """The statements that do on the cluster what `statement` does on one server."""
        for shape, render in (
            (_CREATE_TABLE, self._create_table),
            (_CREATE_VIEW, self._create_view),
            (_ALTER, self._alter),
            (_DROP_VIEW, self._drop_view),
            (_INSERT_SELECT, self._insert_select),
        ):
            match = shape.match(statement.strip())
            if match is not None:
                return render(match)
        raise ClusterRenderError(
            f"{source or 'migration'}: no cluster rendering for {statement.strip()[:80]!r}"
        )

    def _create_table(self, match: re.Match[str]) -> list[str]:
        name, body = match["name"], match["body"].strip()
        if name not in SHARD_KEYS:
            raise ClusterRenderError(f"table {name} has no shard key: add it to SHARD_KEYS")
        as_table = _AS_TABLE.match(body)
        if as_table is not None:
            body = f"AS {self._local(as_table.group(1))}"
        arguments, rest = _balanced_arguments(match["rest"])
        replication = f"'/clickhouse/tables/{{shard}}/{self.database}/{name}_local', '{{replica}}'"
        engine_arguments = f"{replication}, {arguments}" if arguments else replication
        return [
            f"CREATE TABLE IF NOT EXISTS {self._local(name)} {self.on_cluster}\n{body}\n"
            f"ENGINE = Replicated{match['engine']}({engine_arguments}){rest}",
            f"CREATE TABLE IF NOT EXISTS {self._table(name)} {self.on_cluster}\n"
            f"AS {self._local(name)}\n"
            f"ENGINE = Distributed(`{self.cluster}`, `{self.database}`, `{name}_local`,"
            f" {SHARD_KEYS[name]})",
        ]

    def _create_view(self, match: re.Match[str]) -> list[str]:
        select = _SOURCE.sub(lambda m: f"{m[1]} {self._local(m[2])}", match["select"])
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self._table(match['name'])}"
            f" {self.on_cluster}\nTO {self._local(match['target'])}\nAS {select}"
        ]

    def _alter(self, match: re.Match[str]) -> list[str]:
        name, actions = match["name"], match["actions"].strip()
        if _has_top_level_comma(actions):
            raise ClusterRenderError(f"ALTER TABLE {name}: one action per statement on a cluster")
        local = f"ALTER TABLE {self._local(name)} {self.on_cluster} {actions}"
        if _COLUMN_ACTION.match(actions):
            return [local, f"ALTER TABLE {self._table(name)} {self.on_cluster} {actions}"]
        return [local]

    def _drop_view(self, match: re.Match[str]) -> list[str]:
        return [f"DROP VIEW IF EXISTS {self._table(match['name'])} {self.on_cluster} SYNC"]

    def _insert_select(self, match: re.Match[str]) -> list[str]:
        # Through the Distributed tables, once: rows go where the target's shard key sends
        # them. A subquery's set is built once and sent to every shard (GLOBAL), not run on
        # each shard over the whole cluster again.
        statement = _SOURCE.sub(lambda m: f"{m[1]} {self._table(m[2])}", match[0])
        statement = re.sub(r"(?<!GLOBAL )\b(NOT\s+)?IN\s*\(\s*SELECT\b", r"GLOBAL \g<0>", statement)
        return [
            statement.replace(
                f"INSERT INTO {match['name']}", f"INSERT INTO {self._table(match['name'])}", 1
            )
        ]
