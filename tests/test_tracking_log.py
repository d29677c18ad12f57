"""The tracking log: a group of appends written by the loop, fsynced by the helper process, then
handed to the writer and answered (without the helper, the loop fsyncs); stored events'
messages in the same segments; a segment deleted only once the writer and the relay are both
past it; the backlog bounded; a stopped process's log replayed through the same writer and
session step as live traffic, from its writer's committed offset."""

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
from core.tracked import envelope_lines
from ingest.enrich import Context, enrich
from ingest.fsync_helper import FSYNCER
from ingest.log_files import RELAY_FLOOR, WRITER_OFFSET, RelayOffset, read_mark, write_relay_offset
from ingest.schema import TrackingEvent
from ingest.tracking_log import TrackingLog, open_log
from ingest.writer import BatchWriter
from tests.conftest import counter, encode, event, take
from tests.conftest import tracking_rows as rows


def writer_on(
    warehouse: Warehouse, on_stored: Callable[[list[TrackingRow]], Any] | None = None
) -> BatchWriter[TrackingRow]:
    # Not started: it only buffers what the log hands it (and stores on `flush`).
    return BatchWriter(
        warehouse,
        "tracking_events",
        TrackingRow,
        max_rows=10_000,
        interval_ms=1000,
        on_stored=on_stored,
    )


def log_in(root: Path, writer: BatchWriter[TrackingRow], **options: Any) -> TrackingLog:
    options.setdefault("max_backlog_bytes", 1 << 30)
    opened = open_log(str(root), writer, count_published=False, **options)
    assert opened.leftovers == []
    return opened.log


def lines(directory: Path) -> list[bytes]:
    return [line for p in sorted(directory.glob("*.jsonl")) for line in p.read_bytes().splitlines()]


async def test_appends_are_answered_once_fsynced_and_then_in_the_writer(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    writer = writer_on(warehouse)
    tracking_log = log_in(tmp_path / "spool", writer)
    await tracking_log.start()
    assert tracking_log._helper.running
    await tracking_log.append(rows(3))
    await tracking_log.append(rows(2))
    assert writer.pending_rows == 5
    (segment,) = tracking_log.directory.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 5

    # The helper gone: the loop fsyncs itself, and nothing accepted is lost.
    process = tracking_log._helper._process
    assert process is not None
    process.kill()
    await process.wait()
    assert not tracking_log._helper.running
    await tracking_log.append(rows(4))
    assert writer.pending_rows == 9
    await tracking_log.close()
    tracking_log.release()


async def test_a_segment_goes_once_the_writer_and_the_relay_are_both_past_it(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    logs: list[TrackingLog] = []
    writer = writer_on(warehouse, lambda stored: logs[0].announce(stored))
    tracking_log = log_in(tmp_path / "spool", writer, segment_seconds=3600)
    logs.append(tracking_log)
    directory = tracking_log.directory
    await tracking_log.start()
    accepted = rows(4)
    await tracking_log.append(accepted)
    await writer.flush()  # stored: the writer announces them in the same log
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == 4
    for _ in range(100):
        if writer.done_through == 4:  # their messages are durable
            break
        await asyncio.sleep(0.01)
    assert writer.done_through == 4
    kinds = [line[:1] for line in lines(directory)]
    assert kinds == [b"["] * 4 + [b"{"] * 4  # the accepted rows, then their messages
    (segment,) = directory.glob("*.jsonl")
    segment_name = segment.name.split(".")[0]
    tracking_log._segments[-1].seal()
    tracking_log.maintain()
    assert segment.exists(), "deleted before the relay read it"
    # The writer's committed offset is past the segment: a restart would not replay it.
    assert read_mark(directory / WRITER_OFFSET) > segment_name
    write_relay_offset(directory, RelayOffset(segment_name, segment.stat().st_size - 1, 3))
    tracking_log.maintain()
    assert segment.exists(), "deleted before the relay read its last line"
    assert tracking_log.backlog == 1
    write_relay_offset(directory, RelayOffset(segment_name, segment.stat().st_size, 4))
    tracking_log.maintain()
    assert not segment.exists()
    assert tracking_log.backlog == 0
    await tracking_log.close()
    tracking_log.release()


async def test_past_its_bound_the_relay_skips_the_oldest_messages_and_they_are_counted(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    writer = writer_on(warehouse)
    # segment_seconds=0: every group write opens a segment of its own
    tracking_log = log_in(tmp_path / "spool", writer, segment_seconds=0, max_backlog_bytes=200_000)
    directory = tracking_log.directory
    lost = counter("analytics_publish_lost", routing_key="lomash.analytics.event.tracked")
    lost_events = counter("analytics_events_lost", reason="publish_lost")
    batches = [rows(100) for _ in range(10)]
    for batch in batches:
        tracking_log.announce(batch)
        await asyncio.sleep(0)  # each its own group, so its own segment
    tracking_log.maintain()  # nobody relays: the backlog only grows
    dropped = counter("analytics_publish_lost", routing_key="lomash.analytics.event.tracked") - lost
    assert dropped > 0 and dropped % 100 == 0  # whole segments, oldest first
    assert counter("analytics_events_lost", reason="publish_lost") - lost_events == dropped
    assert tracking_log.backlog == 1000 - dropped
    floor = read_mark(directory / RELAY_FLOOR)
    kept = [p for p in sorted(directory.glob("*.jsonl")) if p.name > floor]
    assert sum(p.stat().st_size for p in kept) <= 200_000
    first_kept = msgspec.json.decode(kept[0].read_bytes().splitlines()[0])["eventId"]
    assert first_kept == str(batches[int(dropped) // 100][0].event_id)
    # Once the relay has moved to the floor, the skipped segments go.
    write_relay_offset(directory, RelayOffset(floor, 0, 0))
    tracking_log.maintain()
    assert sorted(directory.glob("*.jsonl")) == kept
    await tracking_log.close()
    tracking_log.release()


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


async def test_replay_starts_at_the_stopped_writer_s_offset_and_announces_what_lacks_a_message(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    listen: Callable[..., Any],
) -> None:
    """A stopped process's log: a segment before its writer's committed offset (done: not
    replayed), then one holding a stored event with its message, a stored event whose message
    never made it to the log, and an event never stored, then a torn last line. The first
    is published as it is, the second is not announced twice, the third is announced once,
    the fourth is stored and announced."""
    queue = await listen("lomash.analytics.event.tracked")
    done, with_message, without_message, unstored = (rows(1)[0] for _ in range(4))
    # One session each, so the session step numbers each 1.
    await warehouse.insert_lines(
        "tracking_events",
        TRACKING_COLUMNS,
        msgspec.json.Encoder().encode_lines([done, with_message, without_message]),
        dedup_token="test-replay",
    )
    encode_lines = msgspec.json.Encoder().encode_lines
    stopped = Path(settings.spool_dir) / uuid.uuid4().hex
    stopped.mkdir(parents=True)
    (stopped / f"{1:020d}.jsonl").write_bytes(encode_lines([done]) + envelope_lines([done]))
    (stopped / f"{2:020d}.jsonl").write_bytes(
        encode_lines([with_message, without_message, unstored])
        + envelope_lines([with_message])
        + b'["torn'
    )
    (stopped / WRITER_OFFSET).write_text(f"{2:020d}")

    server = await make_server(settings)
    await server.drain()

    expected = [done, with_message, without_message, unstored]
    messages = await take(queue, len(expected), within=10)
    messages += await take(queue, 10, within=1)  # and nothing more
    ids = sorted(m.message_id for m in messages)
    assert ids == sorted(str(r.event_id) for r in expected)  # each once
    stored = await warehouse.rows("SELECT event_id FROM tracking_events")
    assert sorted(r[0] for r in stored) == sorted(r.event_id for r in expected)
    for _ in range(50):  # both consumers past them: the stopped log's segments go
        if not list(stopped.glob("*.jsonl")):
            break
        await asyncio.sleep(0.1)
    assert not list(stopped.glob("*.jsonl"))
