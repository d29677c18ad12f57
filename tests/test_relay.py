"""The event.tracked relay: messages read from the tracking logs on disk (beside the accepted
events, which it skips) and published once the broker confirms them, each directory relayed by
one relay, torn tails and removed segments passed by, a child relay gone with its parent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import httpx
import msgspec
import pytest

from ingest.log_files import RelayOffset, read_relay_offset, write_mark, write_relay_offset
from ingest.relay import Relay
from tests.conftest import AMQP_URL, counter, free_port, take
from tests.conftest import tracking_rows as rows
from tests.service_process import ANALYTICS, ROOT, STARTED, env_for, start_service
from tracked.message import envelope_lines
from tracked.row import TrackingRow

Listen = Callable[..., Awaitable[aio_pika.abc.AbstractQueue]]
TRACKED = "lomash.analytics.event.tracked"


_encode_lines = msgspec.json.Encoder().encode_lines


def log_segment(directory: Path, number: int, accepted: list[TrackingRow]) -> Path:
    """A tracking-log segment as the log writes it: accepted events, then their messages."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{number:020d}.jsonl"
    path.write_bytes(_encode_lines(accepted) + envelope_lines(accepted))
    return path


async def relay_until(relay: Relay, done: Callable[[], bool], within: float = 20) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    deadline = asyncio.get_running_loop().time() + within
    while not done() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    stop.set()
    await task


async def test_two_relays_share_the_directories_and_send_each_message_once(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    queue = await listen(TRACKED)
    sent: list[TrackingRow] = []
    for name in ("a", "b", "c"):
        for number in range(3):
            batch = rows(50)
            log_segment(tmp_path / name, number, batch)
            sent.extend(batch)
    first, second = (Relay(tmp_path, AMQP_URL, exchange_name) for _ in range(2))
    total = len(sent)
    await asyncio.gather(
        relay_until(first, lambda: first.published + second.published >= total),
        relay_until(second, lambda: first.published + second.published >= total),
    )
    messages = await take(queue, total + 10, within=3)
    ids = [m.message_id for m in messages]
    assert sorted(ids) == sorted(str(r.event_id) for r in sent)  # all, none twice
    body = msgspec.json.decode(messages[0].body)
    assert body["eventType"] == "event-tracked" and body["eventId"] == messages[0].message_id
    assert messages[0].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    # Each directory's offset is at the end of its newest segment: its owner (or the process
    # that takes its log over) may delete them all.
    for name in ("a", "b", "c"):
        offset = read_relay_offset(tmp_path / name)
        assert (offset.segment, offset.published) == (f"{2:020d}", 150)
        assert offset.offset == (tmp_path / name / f"{2:020d}.jsonl").stat().st_size


async def test_a_relay_resumes_after_what_it_published(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    queue = await listen(TRACKED)
    directory = tmp_path / "live"
    log_segment(directory, 1, rows(10))
    (directory / ".lock").touch()  # its process lives: the directory stays
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 10)
    assert len(await take(queue, 20, within=1)) == 10
    later = rows(5)
    log_segment(directory, 2, later)
    again = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(again, lambda: again.published >= 5)
    assert sorted(m.message_id for m in await take(queue, 20, within=1)) == sorted(
        str(r.event_id) for r in later
    )
    assert read_relay_offset(directory).published == 15
    assert sorted(p.name for p in directory.glob("*.jsonl")) == [
        f"{1:020d}.jsonl",
        f"{2:020d}.jsonl",
    ], "the relay deleted a segment the writer was not done with"


async def test_the_log_of_a_process_gone_for_good_is_cleared_by_the_relay(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    """No owner (no `.lock`), and its writer done with every segment but the last one: the
    relay publishes all, deletes what both consumers are past, and leaves the rest for the
    process that takes the log over."""
    queue = await listen(TRACKED)
    directory = tmp_path / "gone"
    sent = rows(20)
    for number in range(4):
        log_segment(directory, number + 1, sent[number * 5 : number * 5 + 5])
    write_mark(directory / ".writer-offset", f"{4:020d}")  # segment 4 still has work
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 20)
    assert sorted(m.message_id for m in await take(queue, 30, within=1)) == sorted(
        str(r.event_id) for r in sent
    )
    assert [p.name for p in directory.glob("*.jsonl")] == [f"{4:020d}.jsonl"]
    # The writer done with it too (its owner's last mark): the directory goes.
    write_mark(directory / ".writer-offset", f"{4:020d}~")
    again = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(again, lambda: not directory.exists(), within=5)
    assert not directory.exists()
    assert await take(queue, 5, within=0.5) == []  # nothing sent twice


async def test_a_torn_tail_with_a_newer_segment_after_it_is_stepped_over_and_counted(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    """A write cut short (a full disk, a crash) leaves half a line at the end of a segment the
    log then sealed: the relay passes it instead of waiting for its end for good."""
    queue = await listen(TRACKED)
    directory = tmp_path / "torn"
    before, after = rows(3), rows(4)
    torn = log_segment(directory, 1, before)
    with torn.open("ab") as handle:
        handle.write(envelope_lines(rows(1))[:40])  # half a message line
    log_segment(directory, 2, after)
    (directory / ".lock").touch()
    stepped = counter("tracking_log_damage", reader="relay", kind="torn_tail")
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 7)
    got = await take(queue, 10, within=1)
    assert sorted(m.message_id for m in got) == sorted(str(r.event_id) for r in before + after)
    assert counter("tracking_log_damage", reader="relay", kind="torn_tail") == stepped + 1
    assert read_relay_offset(directory).segment == f"{2:020d}"


async def test_a_segment_removed_under_the_relay_is_passed_by(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    queue = await listen(TRACKED)
    directory = tmp_path / "removed"
    first, later = rows(5), rows(6)
    log_segment(directory, 1, first)
    (directory / ".lock").touch()
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 5)
    # Read half-way into segment 2, then segment 2 vanishes; segment 3 still comes through.
    second = log_segment(directory, 2, rows(4))
    offset = read_relay_offset(directory)
    write_relay_offset(directory, RelayOffset(f"{2:020d}", 10, offset.published))
    second.unlink()
    log_segment(directory, 3, later)
    again = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(again, lambda: again.published >= 6)
    got = await take(queue, 20, within=1)
    assert sorted(m.message_id for m in got) == sorted(str(r.event_id) for r in first + later)


def _state(pid: int) -> str:
    """The process's state letter (`Z` for a zombie), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """The relay children of `pid` (serve also runs the log's fsync helper and, for its spawned
    relay, multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes()
                    if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                        found.append(int(entry.name))
    return found


@pytest.mark.timeout(120)
def test_serve_relays_from_a_child_process_that_goes_with_it(
    tmp_path: Path, isolated_processes: None
) -> None:
    proc, base = start_service(tmp_path)
    deadline = time.monotonic() + 30
    while not (children := _children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children) == 1
    relay = children[0]
    assert httpx.get(f"{base}/readyz").status_code == 200
    # A relay that dies is started again.
    os.kill(relay, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = [c for c in _children(proc.pid) if c != relay and _state(c) != "Z"]
        if children:
            break
        time.sleep(0.1)
    assert len(children) == 1, "the relay was not started again"
    relay = children[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # With its parent gone, the relay goes too (a zombie until init reaps it counts as gone).
    deadline = time.monotonic() + 10
    while _state(relay) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(relay) in ("", "Z")


@pytest.mark.timeout(120)
async def test_relay_command_publishes_the_logs_and_serves_metrics(
    tmp_path: Path, isolated_processes: None, listen: Listen
) -> None:
    metrics_port = free_port()
    env = env_for(tmp_path, METRICS_PORT=str(metrics_port))
    queue_name = env["AMQP_EXCHANGE"]
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(queue_name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, TRACKED)
    written = rows(300)
    log_segment(tmp_path / "tracking-log" / "api-worker-1", 1, written)
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [*ANALYTICS, "relay"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    STARTED.append(proc)
    messages = await take(queue, 300, within=30)
    assert sorted(m.message_id for m in messages) == sorted(str(r.event_id) for r in written)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as ops:
        scraped = (await ops.get("/metrics")).text
        assert f'analytics_events_published_total{{routing_key="{TRACKED}"}} 300.0' in scraped
        assert (await ops.get("/readyz")).json()["status"] == "ready"
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await connection.close()
