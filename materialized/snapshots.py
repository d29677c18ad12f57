"""dashboard_snapshots: computed dashboards, kept 30 days, the fallback when computing fails.

The scheduled rebuild writes the ranges in `SCHEDULED_LABELS`, and only those tell how fresh
the dashboards are: an admin viewing the dashboard must not hide a failing rebuild. Answers
computed on demand are kept too (the last good answer for that range), but gathered in memory
and written together every minute, never one row per view.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.ids import new_event_id
from core.metrics import DASHBOARD_NEVER_REBUILT, DASHBOARD_SNAPSHOT_AGE

SCHEDULED_LABELS = ("today", "week", "month", "last-30-days")
ON_DEMAND = "on-demand"


async def save(
    warehouse: Warehouse, start: datetime, end: datetime, label: str, body: dict[str, Any]
) -> uuid.UUID:
    """Write one snapshot row; its id."""
    snapshot_id = new_event_id()
    await warehouse.command(
        "INSERT INTO dashboard_snapshots (snapshot_id, computed_at, range_start, range_end,"
        " label, body) VALUES ({id:UUID}, now64(3), {start:DateTime64(3, 'UTC')},"
        " {end:DateTime64(3, 'UTC')}, {label:String}, {body:String})",
        {
            "id": snapshot_id,
            "start": start,
            "end": end,
            "label": label,
            "body": msgspec.json.encode(body).decode(),
        },
    )
    return snapshot_id


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


class Freshness(msgspec.Struct, frozen=True):
    """How long the dashboards have waited for the scheduled rebuild.

    `minutes` counts from the newest scheduled snapshot, or, when the rebuild has never written
    one, from the service's installation (its first migration): a fresh install is not stale
    until a rebuild was due and missed, and one that never rebuilds ages like any other."""

    since: datetime
    rebuilt: bool

    @property
    def minutes(self) -> float:
        return max(0.0, (datetime.now(UTC) - self.since).total_seconds() / 60)


async def freshness(warehouse: Warehouse) -> Freshness:
    rebuilt, installed = (
        await warehouse.rows(
            "SELECT (SELECT maxOrNull(computed_at) FROM dashboard_snapshots"
            " WHERE label IN {labels:Array(String)}),"
            " (SELECT minOrNull(applied_at) FROM schema_migrations)",
            {"labels": list(SCHEDULED_LABELS)},
        )
    )[0]
    if rebuilt is not None:
        return Freshness(rebuilt.replace(tzinfo=UTC), rebuilt=True)
    return Freshness((installed or datetime.now(UTC)).replace(tzinfo=UTC), rebuilt=False)


def observe(found: Freshness) -> None:
    DASHBOARD_SNAPSHOT_AGE.set(found.minutes)
    DASHBOARD_NEVER_REBUILT.set(0 if found.rebuilt else 1)


async def age_minutes(warehouse: Warehouse) -> float | None:
    """Minutes since the scheduled rebuild last wrote a snapshot; None when it never has."""
    found = await freshness(warehouse)
    return found.minutes if found.rebuilt else None


async def mark_rebuilt(redis: Redis, at: datetime, *, only_if_unset: bool = False) -> None:
    await redis.set(keys.DASHBOARD_REBUILT_AT, str(at.timestamp()), nx=only_if_unset)


async def freshness_for_scrape(redis: Redis, warehouse: Warehouse) -> Freshness:
    """From the time the rebuild job recorded in Redis; ClickHouse is asked only while Redis
    holds none (never rebuilt, or Redis lost it), and a rebuild it knows of is put back."""
    value = await redis.get(keys.DASHBOARD_REBUILT_AT)
    if value is not None:
        return Freshness(datetime.fromtimestamp(float(value), UTC), rebuilt=True)
    found = await freshness(warehouse)
    if found.rebuilt:
        await mark_rebuilt(redis, found.since, only_if_unset=True)
    return found


class OnDemand:
    """The newest on-demand answer per range, held until the next `flush` writes them all."""

    def __init__(self, warehouse: Warehouse) -> None:
        self._warehouse = warehouse
        self._held: dict[tuple[datetime, datetime], tuple[datetime, dict[str, Any]]] = {}

    def add(self, start: datetime, end: datetime, body: dict[str, Any]) -> None:
        self._held[(start, end)] = (datetime.now(UTC), body)

    def newest(self, start: datetime, end: datetime) -> tuple[datetime, dict[str, Any]] | None:
        return self._held.get((start, end))

    async def flush(self) -> int:
        if not self._held:
            return 0
        held, self._held = self._held, {}
        lines = msgspec.json.Encoder().encode_lines(
            [
                (computed_at, start, end, ON_DEMAND, msgspec.json.encode(body).decode())
                for (start, end), (computed_at, body) in held.items()
            ]
        )
        try:
            await self._warehouse.insert_lines(
                "dashboard_snapshots",
                ("computed_at", "range_start", "range_end", "label", "body"),
                lines,
                dedup_token=new_event_id().hex,
            )
        except BaseException:
            for key, value in held.items():  # kept for the next flush, unless newer came
                self._held.setdefault(key, value)
            raise
        return len(held)
