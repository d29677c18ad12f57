"""Reads of the raw tracking events that the write path needs: which events are stored."""

from __future__ import annotations

import uuid

from core.clickhouse import Warehouse
from core.rows import TrackingRow


async def stored_event_ids(warehouse: Warehouse, rows: list[TrackingRow]) -> set[uuid.UUID]:
    """Which of these rows' events `tracking_events` already holds (their time range bounds
    the search to a few parts)."""
    found = await warehouse.rows(
        "SELECT event_id FROM tracking_events WHERE event_id IN {ids:Array(UUID)}"
        " AND received_at >= {low:DateTime64(3, 'UTC')}"
        " AND received_at <= {high:DateTime64(3, 'UTC')}",
        {
            "ids": [row.event_id for row in rows],
            "low": min(row.received_at for row in rows),
            "high": max(row.received_at for row in rows),
        },
    )
    return {r[0] for r in found}
