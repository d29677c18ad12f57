"""docs/contracts.md, the page other teams read, against the code it describes: every table
checked both ways (nothing listed that the code lacks, nothing in the code left out)."""

import re
import subprocess
from pathlib import Path

import msgspec

from api.openapi import DOCUMENT
from consumers.schemas import CONTRACTS
from core import contracts
from core.clickhouse import Warehouse
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "contracts.md").read_text()
PUBLISHED = {
    contracts.EVENT_TRACKED: contracts.EventTracked,
    contracts.FUNNEL_COMPLETED: contracts.FunnelCompleted,
    contracts.DASHBOARD_REFRESHED: contracts.DashboardRefreshed,
    contracts.REPORT_GENERATED: contracts.ReportGenerated,
    contracts.ALERT_RAISED: contracts.AlertRaised,
}


def section(title: str) -> list[list[str]]:
    """The rows of the first table under `## title`, as lists of cells, header left out."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", PAGE, re.S | re.M)
    assert found, f"docs/contracts.md has no section {title!r}"
    rows = [line for line in found.group(1).splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[2:]


def code(cell: str) -> str:
    found = re.fullmatch(r"`([^`]*)`(.*)", cell)
    assert found, f"expected a `name` first in {cell!r}"
    return found.group(1)


def names(cell: str) -> list[str]:
    return [n.strip() for n in cell.strip("`").split(",") if n.strip()] if cell else []


def test_every_path_of_the_openapi_document_and_no_other() -> None:
    listed = {code(row[0]) for row in section("HTTP")}
    served = {
        f"{method.upper()} {path}"
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
    }
    assert listed == served


def test_every_setting_and_no_other() -> None:
    listed = [code(row[0]) for row in section("Environment variables")]
    fields = [field.name.upper() for field in msgspec.structs.fields(Settings)]
    assert sorted(listed) == sorted(fields)


def test_every_published_topic_with_its_payload_fields() -> None:
    rows = {
        code(row[0]): (code(row[1]), names(row[2]))
        for row in section("Published on `AMQP_EXCHANGE`")
    }
    expected = {
        topic.routing_key: (
            topic.event_type,
            [field.encode_name for field in msgspec.structs.fields(payload)],
        )
        for topic, payload in PUBLISHED.items()
    }
    assert rows == expected
    assert {t.routing_key for t in PUBLISHED} == {
        v.routing_key for v in vars(contracts).values() if isinstance(v, contracts.Topic)
    }


def test_every_consumed_routing_key_with_its_required_and_optional_fields() -> None:
    rows = {
        code(row[0]): (code(row[1]), names(row[2]), names(row[3]))
        for row in section("Consumed from `AMQP_EXCHANGE`")
    }
    expected = {}
    for key, contract in CONTRACTS.items():
        fields = msgspec.structs.fields(contract.payload)
        expected[key] = (
            contract.event_type,
            [f.encode_name for f in fields if f.required],
            [f.encode_name for f in fields if not f.required],
        )
    assert rows == expected


async def test_every_table_the_migrations_make_and_no_other(warehouse: Warehouse) -> None:
    listed = {code(row[0]) for row in section("ClickHouse tables")}
    made = await warehouse.rows(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
        " AND NOT startsWith(name, '.inner')"
    )
    tables = {name for name, engine in made if engine != "MaterializedView"}
    views = {name for name, engine in made if engine == "MaterializedView"}
    assert listed == tables
    assert {v.removesuffix("_mv") for v in views} <= tables  # each view keeps its table


def test_nothing_in_the_repository_points_outside_it() -> None:
    """A clone is all a reader has: no link or mention of a file beside the repository."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"\.\./(shared|\.library)\b|\bDESIGN\.md\b|\bSTYLE\.md\b")
    offenders = [
        path
        for path in tracked
        if path != "uv.lock"
        and (ROOT / path).is_file()
        and outside.search((ROOT / path).read_text(errors="replace"))
    ]
    assert offenders == []
