"""The tracking log: groups of appends written by the loop and fsynced by the helper process
(without it, by the loop); a segment sealed by size or by the writer's timer is one batch with
a token from its place; a commit writes the batch's messages and the writer's mark in one
durable write; a segment goes once the writer and the relay are both past it; the backlog is
bounded; a stopped process's log is read from its last commit by the same writer as live
traffic; a full disk, a read-only directory and a directory removed at run time lose nothing
that got a 202."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.settings import Settings
from ingest.enrich import Context, enrich
from ingest.fsync_helper import FSYNCER
from ingest.log_files import (
    RELAY_FLOOR,
    WRITER_OFFSET,
    RelayOffset,
    commit_line,
    read_mark,
    write_relay_offset,
)
from ingest.schema import TrackingEvent
from ingest.sessions import SessionStore, claim_of
from ingest.tracking_log import TrackingLog, open_log
from ingest.writer import LogWriter
from tests.conftest import counter, encode, event, fill, take
from tests.conftest import tracking_rows as rows
from tracked.message import envelope_lines
from tracked.retry_queue import RetryQueue
from tracked.row import TRACKING_COLUMNS, TrackingRow

_encode_lines = msgspec.json.Encoder().encode_lines


def log_in(root: Path, **options: Any) -> TrackingLog:
    options.setdefault("max_backlog_bytes", 1 << 30)
    options.setdefault("rows_per_segment", 10_000)
    return open_log(str(root), count_published=False, **options)


Started = Callable[..., Awaitable[TrackingLog]]


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Started]:
    """`await started(**options)`: a running log under the test's directory (or `root=`),
    closed and let go of after the test."""
    opened: list[TrackingLog] = []

    async def start(root: Path | None = None, **options: Any) -> TrackingLog:
        tracking_log = log_in(root or tmp_path / "log", **options)
        await tracking_log.start()
        opened.append(tracking_log)
        return tracking_log

    yield start
    for tracking_log in opened:
        await tracking_log.close()
        tracking_log.release()


def writer_of(tracking_log: TrackingLog, warehouse: Warehouse, redis: Redis) -> LogWriter:
    # Not started: it places what the log holds on `flush`.
    return LogWriter(
        tracking_log,
        warehouse,
        interval_ms=60_000,
        prepare=SessionStore(redis).enrich,
        hand_off=RetryQueue(redis).push,
        dead_letter=partial(RetryQueue(redis).dead_letter, "tracking_events"),
    )


def lines(directory: Path) -> list[bytes]:
    return [line for p in sorted(directory.glob("*.jsonl")) for line in p.read_bytes().splitlines()]


def token_of(directory: Path, segment: str) -> str:
    return hashlib.sha256(f"{directory.name}/{segment}".encode()).hexdigest()[:32]


async def stored(warehouse: Warehouse) -> list[uuid.UUID]:
    return [r[0] for r in await warehouse.rows("SELECT event_id FROM tracking_events")]


async def test_appends_are_answered_once_fsynced_and_the_loop_fsyncs_without_the_helper(
    started: Started,
) -> None:
    tracking_log = await started()
    assert tracking_log._helper.running
    await tracking_log.append(rows(3))
    await tracking_log.append(rows(2))
    assert tracking_log.unread_rows == 5
    (segment,) = tracking_log.directory.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 5

    # The helper gone: the loop fsyncs itself, and nothing accepted is lost.
    process = tracking_log._helper._process
    assert process is not None
    process.kill()
    await process.wait()
    assert not tracking_log._helper.running
    await tracking_log.append(rows(4))
    assert tracking_log.unread_rows == 9


async def test_a_segment_is_one_batch_sealed_by_size_or_by_the_timer(started: Started) -> None:
    tracking_log = await started(rows_per_segment=10)
    groups = [rows(3) for _ in range(4)]
    for group in groups:
        await tracking_log.append(group)
    assert tracking_log.ready.is_set()  # 12 rows: sealed, a batch's worth
    later = rows(2)
    await tracking_log.append(later)
    batch = tracking_log.next_batch()
    assert batch is not None
    assert [r.event_id for r in batch.rows] == [r.event_id for g in groups for r in g]
    assert batch.token == token_of(tracking_log.directory, batch.segment.name)
    assert tracking_log.next_batch() is None  # the writer commits one batch at a time
    await tracking_log.commit(batch, batch.rows)
    assert tracking_log.next_batch() is None  # the open segment waits for the timer
    tracking_log.seal()
    await tracking_log.durable()
    second = tracking_log.next_batch()
    assert second is not None and [r.event_id for r in second.rows] == [r.event_id for r in later]
    assert tracking_log.unread_rows == 2


async def test_a_commit_announces_and_a_segment_goes_once_both_readers_are_past_it(
    started: Started, warehouse: Warehouse, redis: Redis
) -> None:
    tracking_log = await started()
    directory = tracking_log.directory
    writer = writer_of(tracking_log, warehouse, redis)
    accepted = rows(4)
    await tracking_log.append(accepted)
    await writer.flush()
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == 4
    assert tracking_log.unread_rows == 0
    first, second = sorted(directory.glob("*.jsonl"))
    assert [line[:1] for line in first.read_bytes().splitlines()] == [b"["] * 4
    # The batch's messages and the writer's commit, in one write in the next segment.
    assert second.read_bytes().splitlines()[:4] == envelope_lines(accepted).splitlines()
    assert second.read_bytes().endswith(commit_line(first.name.split(".")[0] + "~"))
    tracking_log.maintain()
    assert read_mark(directory / WRITER_OFFSET) > first.name.split(".")[0]
    assert first.exists(), "deleted before the relay read it"
    # Shutdown waits for the relay to read the messages, which sit in the segment after.
    assert not await tracking_log.relayed(within=0.2)
    tracking_log.seal()
    second_name = second.name.split(".")[0]
    write_relay_offset(directory, RelayOffset(second_name, second.stat().st_size, 4))
    assert await tracking_log.relayed(within=0.2)
    tracking_log.maintain()
    assert not first.exists()
    assert tracking_log.backlog == 0
    await tracking_log.close()  # every row placed and every message read: nothing is left
    assert sorted(directory.glob("*.jsonl")) == []


async def test_past_its_bound_the_relay_skips_the_oldest_messages_and_they_are_counted(
    started: Started,
) -> None:
    tracking_log = await started(rows_per_segment=100, max_backlog_bytes=200_000)
    directory = tracking_log.directory
    lost = counter("analytics_publish_lost", routing_key="lomash.analytics.event.tracked")
    lost_events = counter("analytics_events_lost", reason="publish_lost")
    batches = [rows(100) for _ in range(10)]
    for accepted in batches:
        await tracking_log.append(accepted)  # a segment of its own: a batch's worth
        batch = tracking_log.next_batch()
        assert batch is not None
        await tracking_log.commit(batch, batch.rows)  # its messages go into the next one
    tracking_log.maintain()  # nobody relays: the backlog only grows
    dropped = counter("analytics_publish_lost", routing_key="lomash.analytics.event.tracked") - lost
    assert dropped > 0 and dropped % 100 == 0  # whole segments, oldest first
    assert counter("analytics_events_lost", reason="publish_lost") - lost_events == dropped
    assert tracking_log.backlog == 1000 - dropped
    floor = read_mark(directory / RELAY_FLOOR)
    kept = [p for p in sorted(directory.glob("*.jsonl")) if p.name > floor]
    kept_messages = [line for p in kept for line in p.read_bytes().splitlines() if line[:1] == b"{"]
    assert sum(len(line) + 1 for line in kept_messages) <= 200_000
    first_kept = msgspec.json.decode(kept_messages[0])["eventId"]
    assert first_kept == str(batches[int(dropped) // 100][0].event_id)
    # Once the relay has moved to the floor, the skipped segments go.
    write_relay_offset(directory, RelayOffset(floor, 0, 0))
    tracking_log.maintain()
    assert sorted(directory.glob("*.jsonl")) == kept


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


def accepted_rows(n: int, session: uuid.UUID) -> list[TrackingRow]:
    """`n` rows of one session as the request path makes them (before the session step)."""
    made = enrich(
        [
            msgspec.json.decode(encode(event(sessionId=str(session))), type=TrackingEvent)
            for _ in range(n)
        ],
        Context(received_at=datetime.now(UTC)),
    )
    for number, row in enumerate(made):  # in the order they were accepted
        row.received_at = datetime(2026, 11, 27, 10, 0, number, tzinfo=UTC)
    return made


async def test_a_stopped_process_s_events_are_read_through_the_session_step_once(
    make_server: Callable[[Settings], Any], settings: Settings, warehouse: Warehouse, redis: Redis
) -> None:
    """Its log holds one session's events: one sent twice, one whose id its writer had claimed
    for this very line before it died, one claimed by another line (a duplicate). Each is
    stored once, numbered as live traffic is, and the log is cleared once read and relayed."""
    landing = (
        "https://www.lomashwood.co.uk/kitchens?utm_source=news&utm_medium=email&utm_campaign=may"
    )
    session = uuid.uuid4()
    accepted = accepted_rows(4, session)
    accepted[0].url = landing
    stopped = Path(settings.tracking_log_dir) / uuid.uuid4().hex
    stopped.mkdir(parents=True)
    segment = f"{1:020d}"
    on_disk = [accepted[0], accepted[1], accepted[1], accepted[2], accepted[3]]
    (stopped / f"{segment}.jsonl").write_bytes(_encode_lines(on_disk))
    owner = int(token_of(stopped, segment)[:8], 16)
    this_line = claim_of(owner, 2)  # the second row of the batch: claimed by its own line
    await redis.set(keys.accepted_event(accepted[1].event_id.bytes), this_line)
    await redis.set(keys.accepted_event(accepted[3].event_id.bytes), b"another line")

    server = await make_server(settings)
    await server.drain()

    found = await warehouse.dicts(
        "SELECT * FROM tracking_events WHERE session_id = {s:UUID} ORDER BY received_at",
        {"s": session},
    )
    assert [r["event_id"] for r in found] == [row.event_id for row in accepted[:3]]
    assert [r["session_seq"] for r in found] == [1, 2, 3]
    assert {r["landing_page"] for r in found} == {landing}
    assert {(r["utm_source"], r["utm_medium"], r["utm_campaign"]) for r in found} == {
        ("news", "email", "may")
    }
    assert {r["session_started_at"] for r in found} == {found[0]["received_at"]}
    for _ in range(100):  # placed, relayed, then cleared with its directory
        if not stopped.exists():
            break
        await asyncio.sleep(0.1)
    assert not stopped.exists()


async def test_a_stopped_log_is_read_from_its_last_commit_and_a_landed_batch_is_stored_once(
    make_server: Callable[[Settings], Any],
    settings: Settings,
    warehouse: Warehouse,
    listen: Callable[..., Any],
) -> None:
    """Segment 1: committed (its messages and the commit line are in segment 2). Segment 2 also
    holds rows its writer inserted just before it was killed, with no commit. Segment 3: rows
    never stored, then a torn last line. Nothing is stored twice, each event is announced
    once, the torn tail is stepped over and counted."""
    queue = await listen("lomash.analytics.event.tracked")
    done, landed, unstored = rows(2), rows(3), rows(2)
    stopped = Path(settings.tracking_log_dir) / uuid.uuid4().hex
    stopped.mkdir(parents=True)
    names = [f"{n:020d}" for n in (1, 2, 3)]
    (stopped / f"{names[0]}.jsonl").write_bytes(_encode_lines(done))
    (stopped / f"{names[1]}.jsonl").write_bytes(
        envelope_lines(done) + commit_line(names[0] + "~") + _encode_lines(landed)
    )
    (stopped / f"{names[2]}.jsonl").write_bytes(_encode_lines(unstored) + b'["torn')
    await warehouse.insert_lines(
        "tracking_events", TRACKING_COLUMNS, _encode_lines(done), dedup_token="committed"
    )
    await warehouse.insert_lines(  # the insert that landed before the kill, with its token
        "tracking_events",
        TRACKING_COLUMNS,
        _encode_lines(landed),
        dedup_token=token_of(stopped, names[1]),
    )
    torn = counter("tracking_log_damage", reader="writer", kind="torn_tail")

    server = await make_server(settings)
    await server.drain()

    expected = sorted(r.event_id for r in done + landed + unstored)
    assert sorted(await stored(warehouse)) == expected
    messages = await take(queue, len(expected), within=10)
    messages += await take(queue, 10, within=1)  # and nothing more
    assert sorted(uuid.UUID(m.message_id) for m in messages) == expected
    assert counter("tracking_log_damage", reader="writer", kind="torn_tail") == torn + 1


@pytest.fixture
async def on_small_disk(small_disk: Path, started: Started) -> TrackingLog:
    return await started(small_disk / "log")


async def test_a_full_disk_refuses_the_group_whole_and_the_log_goes_on_once_freed(
    small_disk: Path, on_small_disk: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    tracking_log = on_small_disk
    accepted = rows(20)
    await tracking_log.append(accepted)
    filler = fill(small_disk)
    # The space reserved ahead of the writes still takes groups; then they are refused.
    for _ in range(10_000):
        group = rows(20)
        try:
            await tracking_log.append(group)
        except OSError as error:
            assert error.errno == 28  # ENOSPC
            break
        accepted += group
    else:
        raise AssertionError("a full disk never refused a group")
    (segment,) = tracking_log.directory.glob("*.jsonl")
    data = segment.read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == len(accepted)  # nothing of it
    filler.unlink()
    again = rows(20)
    await tracking_log.append(again)
    writer = writer_of(tracking_log, warehouse, redis)
    await writer.flush()
    assert sorted(await stored(warehouse)) == sorted(r.event_id for r in accepted + again)
    assert tracking_log.unread_rows == 0


async def test_a_commit_the_full_disk_refuses_is_retried_and_lands_once_freed(
    small_disk: Path, on_small_disk: TrackingLog, warehouse: Warehouse, redis: Redis
) -> None:
    tracking_log = on_small_disk
    accepted = rows(30)
    await tracking_log.append(accepted)
    tracking_log.seal()
    await tracking_log.durable()
    filler = fill(small_disk)
    writer = writer_of(tracking_log, warehouse, redis)
    flushing = asyncio.create_task(writer.flush())
    for _ in range(100):  # stored, then its commit refused: the writer waits to try again
        if await warehouse.scalar("SELECT count() FROM tracking_events") == 30:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert not flushing.done() and tracking_log.unread_rows == 30
    filler.unlink()
    await asyncio.wait_for(flushing, 10)
    assert tracking_log.unread_rows == 0
    assert sorted(await stored(warehouse)) == sorted(r.event_id for r in accepted)
    message_lines = [line for line in lines(tracking_log.directory) if line[:1] == b"{"]
    assert len(message_lines) == 30  # announced once


def mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True, timeout=30)


async def test_a_read_only_log_directory_answers_errors_and_recovers(
    started: Started, warehouse: Warehouse, redis: Redis
) -> None:
    """Made read-only under the running process (a remount): the open segment takes writes,
    no new one can be made, so groups are refused until it is writable again."""
    tracking_log = await started()
    directory = str(tracking_log.directory)
    first = rows(5)
    await tracking_log.append(first)
    tracking_log.seal()  # the next group needs a new segment
    await tracking_log.durable()
    bound = mount("--bind", directory, directory)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        assert mount("-o", "remount,ro,bind", directory).returncode == 0
        with pytest.raises(OSError) as raised:
            await tracking_log.append(rows(5))
        assert raised.value.errno == 30  # EROFS
    finally:
        subprocess.run(["umount", directory], check=True)  # noqa: ASYNC221 - immediate
    later = rows(5)
    await tracking_log.append(later)
    await writer_of(tracking_log, warehouse, redis).flush()
    assert sorted(await stored(warehouse)) == sorted(r.event_id for r in first + later)


async def test_a_log_directory_removed_at_run_time_is_made_again_with_what_it_held(
    started: Started, warehouse: Warehouse, redis: Redis
) -> None:
    tracking_log = await started()
    held = rows(7)
    await tracking_log.append(held)
    removed = counter("tracking_log_damage", reader="log", kind="directory_removed")
    shutil.rmtree(tracking_log.directory)
    tracking_log.maintain()
    assert counter("tracking_log_damage", reader="log", kind="directory_removed") == removed + 1
    await tracking_log.durable()
    assert len(lines(tracking_log.directory)) == 7  # written back from memory, durable again
    later = rows(3)
    await tracking_log.append(later)
    await writer_of(tracking_log, warehouse, redis).flush()
    assert sorted(await stored(warehouse)) == sorted(r.event_id for r in held + later)
    assert (tracking_log.directory / ".lock").exists()
