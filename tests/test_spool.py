"""The spool's durability step: a group of appends written by the loop, fsynced by the helper
process, then handed to the writer and answered; without the helper, the loop fsyncs. A stopped
process's spool is replayed through the same writer and session step as live traffic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.rows import TRACKING_COLUMNS, TrackingRow
from core.settings import Settings
from ingest.enrich import Context, enrich
from ingest.schema import TrackingEvent
from ingest.spool import FSYNCER, open_spool
from ingest.writer import BatchWriter
from tests.conftest import encode, event
from tests.conftest import tracking_rows as rows


def writer_on(warehouse: Warehouse) -> BatchWriter[TrackingRow]:
    # Not started: it only buffers what the spool hands it.
    return BatchWriter(warehouse, "tracking_events", TrackingRow, max_rows=10_000, interval_ms=1000)


async def test_appends_are_answered_once_fsynced_and_then_in_the_writer(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    writer = writer_on(warehouse)
    spool, leftovers = open_spool(str(tmp_path / "spool"), writer)
    assert leftovers == []
    await spool.start()
    assert spool._syncer.running
    await spool.append(rows(3))
    await spool.append(rows(2))
    assert writer.pending_rows == 5
    (segment,) = spool.directory.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 5

    # The helper gone: the loop fsyncs itself, and nothing accepted is lost.
    process = spool._syncer._process
    assert process is not None
    process.kill()
    await process.wait()
    assert not spool._syncer.running
    await spool.append(rows(4))
    assert writer.pending_rows == 9
    await spool.close()
    spool.release()


def test_the_helper_answers_each_path_in_order_and_names_a_failure(tmp_path: Path) -> None:
    present = tmp_path / "segment.jsonl"
    present.write_bytes(b"{}\n")
    answers = subprocess.run(
        [sys.executable, "-S", str(FSYNCER)],
        input=f"{present}\n{tmp_path / 'missing'}\n{present}\n".encode(),
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert answers[0] == b"" and answers[2] == b""
    assert answers[1].startswith(b"!") and b"No such file" in answers[1]


async def test_a_stopped_process_s_events_are_replayed_through_the_session_step(
    make_server: Callable[[Settings], Any], settings: Settings, warehouse: Warehouse, redis: Redis
) -> None:
    """Its spool holds one session's events before enrichment: one sent twice, one its writer
    had marked seen in Redis before it died, one already in ClickHouse. Each is stored once,
    with the session's data and numbered as live traffic is."""
    landing = (
        "https://www.lomashwood.co.uk/kitchens?utm_source=news&utm_medium=email&utm_campaign=may"
    )
    session = uuid.uuid4()
    spooled = enrich(
        [
            msgspec.json.decode(encode(event(sessionId=str(session))), type=TrackingEvent)
            for _ in range(4)
        ],
        Context(received_at=datetime.now(UTC)),
    )
    spooled[0].url = landing
    for n, row in enumerate(spooled):  # in the order they were accepted
        row.received_at = datetime(2026, 11, 27, 10, 0, n, tzinfo=UTC)
    already = spooled[3]
    await warehouse.insert_lines(
        "tracking_events",
        TRACKING_COLUMNS,
        msgspec.json.Encoder().encode_lines([already]),
        dedup_token="test",
    )
    await redis.set(keys.accepted_event(spooled[1].event_id.bytes), "1")
    stopped = Path(settings.spool_dir) / uuid.uuid4().hex
    stopped.mkdir(parents=True)
    (stopped / "00000000000000000001.jsonl").write_bytes(
        msgspec.json.Encoder().encode_lines([spooled[0], spooled[1], spooled[1], *spooled[2:]])
    )

    server = await make_server(settings)
    await server.drain()

    rows = await warehouse.dicts(
        "SELECT * FROM tracking_events WHERE session_id = {s:UUID} ORDER BY received_at",
        {"s": session},
    )
    assert [r["event_id"] for r in rows] == [row.event_id for row in spooled]
    replayed = rows[:3]
    assert [r["session_seq"] for r in replayed] == [1, 2, 3]
    assert {r["landing_page"] for r in replayed} == {landing}
    assert {(r["utm_source"], r["utm_medium"], r["utm_campaign"]) for r in replayed} == {
        ("news", "email", "may")
    }
    assert {r["session_started_at"] for r in replayed} == {replayed[0]["received_at"]}
    for _ in range(50):  # taken over, stored, then deleted by the spool's trim (every 0.5 s)
        if not list(stopped.glob("*.jsonl")):
            break
        await asyncio.sleep(0.1)
    assert not list(stopped.glob("*.jsonl"))
