"""dashboard_snapshots: computed dashboards, kept 30 days, the fallback when computing fails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from materialized.warehouse import Warehouse


async def save(
    warehouse: Warehouse, start: datetime, end: datetime, label: str, body: dict[str, Any]
) -> None:
    await warehouse.command(
        "INSERT INTO dashboard_snapshots (computed_at, range_start, range_end, label, body)"
        " VALUES (now64(3), {start:DateTime64(3, 'UTC')}, {end:DateTime64(3, 'UTC')},"
        " {label:String}, {body:String})",
        {"start": start, "end": end, "label": label, "body": msgspec.json.encode(body).decode()},
    )


async def newest(
    warehouse: Warehouse, start: datetime | None = None, end: datetime | None = None
) -> tuple[datetime, dict[str, Any]] | None:
    """The newest snapshot for the range, or the newest of all when there is none for it."""
    for where, params in (
        (
            "WHERE range_start = {start:DateTime64(3, 'UTC')}"
            " AND range_end = {end:DateTime64(3, 'UTC')}",
            {"start": start, "end": end},
        ),
        ("", {}),
    ):
        if where and start is None:
            continue
        rows = await warehouse.rows(
            f"SELECT computed_at, body FROM dashboard_snapshots {where}"
            " ORDER BY computed_at DESC LIMIT 1",
            params,
        )
        if rows:
            computed_at, body = rows[0]
            return computed_at.replace(tzinfo=UTC), msgspec.json.decode(body)
    return None


async def age_minutes(warehouse: Warehouse) -> float | None:
    value = await warehouse.scalar(
        "SELECT dateDiff('second', max(computed_at), now64(3)) / 60 FROM dashboard_snapshots"
        " HAVING count() > 0"
    )
    return None if value is None else float(value)
