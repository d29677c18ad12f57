"""Attacks, counted event by event: the same rows as the fault table (tests/test_faults.py).

Replayed eventIds, forged X-Forwarded-For floods against the rate limit, and hostile bodies.
Each test checks what was stored and records its row for the table printed at the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from core.settings import Settings
from materialized.warehouse import Warehouse
from tests.conftest import Outcome, Running, event, stored_ids
from tests.hostile import HOSTILE
from tests.load import LoadResult

TRACK = "/v1/analytics/track"


def answered(sent: int, accepted: list[str], refused: int) -> LoadResult:
    """What a sequential attacker saw: every request answered, 202 or 4xx."""
    return LoadResult(sent, accepted, {"202": len(accepted), "4xx": refused}, 0, 0, 0.0)


async def test_replaying_accepted_events_stores_each_once(
    server: Running, warehouse: Warehouse, record_outcome: Callable[[Outcome], None]
) -> None:
    batch = [event(eventId=str(uuid.uuid4())) for _ in range(100)]
    accepted: list[str] = []
    for _ in range(4):  # the original and three replays, some overlapping in flight
        answers = await asyncio.gather(
            *(server.http.post(TRACK, json=batch[i : i + 10]) for i in range(0, 100, 10))
        )
        for answer in answers:
            assert answer.status_code == 202
            accepted.extend(answer.json()["eventIds"])
        await server.drain()
    stored = await stored_ids(warehouse)
    result = Outcome.of("same 100 eventIds sent 4 times", 0, answered(400, accepted, 0), stored)
    record_outcome(result)
    assert result.stored == 100 and result.duplicated == 0 and result.lost == 0


async def test_forged_forwarded_for_flood_stays_within_the_limit(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    record_outcome: Callable[[Outcome], None],
) -> None:
    server: Running = await make_server(msgspec.structs.replace(settings, rate_limit="50/minute"))
    accepted: list[str] = []
    refused = 0
    for start in range(0, 300, 30):
        answers = await asyncio.gather(
            *(
                server.http.post(
                    TRACK, json=event(), headers={"x-forwarded-for": f"203.0.113.{i % 250}"}
                )
                for i in range(start, start + 30)
            )
        )
        for answer in answers:
            if answer.status_code == 202:
                accepted.append(answer.json()["eventId"])
            else:
                assert answer.status_code == 429
                refused += 1
    await server.drain()
    stored = await stored_ids(warehouse)
    result = Outcome.of(
        "300 requests, forged X-Forwarded-For", 0, answered(300, accepted, refused), stored
    )
    record_outcome(result)
    assert result.accepted == 50 and result.refused == 250
    assert result.stored == 50 and result.lost == 0


async def test_hostile_bodies_store_nothing(
    server: Running, warehouse: Warehouse, record_outcome: Callable[[Outcome], None]
) -> None:
    refused = 0
    for param in HOSTILE:
        (body,) = param.values
        assert isinstance(body, bytes)
        answer = await server.http.post(
            TRACK, content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= answer.status_code < 500, answer.text
        refused += 1
    assert (await server.http.get("/healthz")).status_code == 200
    await server.drain()
    stored = await stored_ids(warehouse)
    sent = answered(len(HOSTILE), [], refused)
    record_outcome(Outcome.of(f"{len(HOSTILE)} hostile bodies", 0, sent, stored))
    assert stored == []
