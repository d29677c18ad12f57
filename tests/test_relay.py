"""The event.tracked outbox and relay: messages on disk until the broker confirms them, each
directory relayed by one relay, the backlog bounded, a child relay gone with its parent."""

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

from core.rows import TrackingRow
from core.tracked import envelope
from ingest.outbox import SEALED, Outbox, read_offset
from ingest.relay import Relay
from tests.conftest import AMQP_URL, counter, free_port, take
from tests.conftest import tracking_rows as rows
from tests.service_process import ANALYTICS, ROOT, STARTED, env_for, start_service

Listen = Callable[..., Awaitable[aio_pika.abc.AbstractQueue]]
TRACKED = "lomash.analytics.event.tracked"


def outbox_in(root: Path, name: str, max_bytes: int = 1 << 30) -> Outbox:
    directory = root / name
    directory.mkdir(parents=True)
    # segment_seconds=0: every append opens a segment of its own (sealing the one before)
    return Outbox(directory, max_bytes, count_published=False, segment_seconds=0)


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
        outbox = outbox_in(tmp_path, name)
        for _ in range(3):
            batch = rows(50)
            outbox.append(batch)
            sent.extend(batch)
        outbox.close()
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
    # Wholly published, their processes gone (no .lock): the directories are removed.
    assert os.listdir(tmp_path) == []


async def test_a_relay_resumes_after_what_it_published(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    queue = await listen(TRACKED)
    outbox = outbox_in(tmp_path, "live")
    (outbox.directory / ".lock").touch()  # its process lives: the directory stays
    outbox.append(rows(10))
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 10)
    assert len(await take(queue, 20, within=1)) == 10
    later = rows(5)
    outbox.append(later)
    again = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(again, lambda: again.published >= 5)
    assert sorted(m.message_id for m in await take(queue, 20, within=1)) == sorted(
        str(r.event_id) for r in later
    )
    assert read_offset(outbox.directory).published == 15
    outbox.maintain()
    assert outbox.backlog == 0


async def test_an_outbox_written_before_the_line_format_change_is_still_relayed(
    tmp_path: Path, exchange_name: str, listen: Listen
) -> None:
    """Lines were `<eventId> <envelope>` until 2026-11-28; an upgrade finds some on disk."""
    queue = await listen(TRACKED)
    old = rows(3)
    directory = tmp_path / "upgraded"
    directory.mkdir()
    (directory / f"00000000000000000001{SEALED}").write_bytes(
        b"".join(b"%s %s\n" % (str(r.event_id).encode(), envelope(r)) for r in old)
    )
    outbox = Outbox(directory, 1 << 30, count_published=False)
    new = rows(2)
    outbox.append(new)
    outbox.close()
    relay = Relay(tmp_path, AMQP_URL, exchange_name)
    await relay_until(relay, lambda: relay.published >= 5)
    got = await take(queue, 10, within=1)
    assert [m.message_id for m in got] == [str(r.event_id) for r in old + new]
    assert [msgspec.json.decode(m.body)["eventId"] for m in got] == [m.message_id for m in got]


def test_a_backlog_past_its_bound_drops_the_oldest_messages_and_counts_them(
    tmp_path: Path,
) -> None:
    outbox = outbox_in(tmp_path, "full", max_bytes=200_000)
    lost = counter("analytics_publish_lost", routing_key=TRACKED)
    lost_events = counter("analytics_events_lost", reason="publish_lost")
    batches = [rows(100) for _ in range(10)]
    for batch in batches:
        outbox.append(batch)
    outbox.maintain()  # nobody relays: the backlog only grows
    size = sum(p.stat().st_size for p in outbox.directory.glob("*.tracked*"))
    assert size <= 200_000
    dropped = counter("analytics_publish_lost", routing_key=TRACKED) - lost
    assert dropped > 0 and dropped % 100 == 0  # whole segments, oldest first
    assert counter("analytics_events_lost", reason="publish_lost") - lost_events == dropped
    assert outbox.backlog == 1000 - dropped
    kept = sorted(outbox.directory.glob(f"*{SEALED}")) + sorted(outbox.directory.glob("*.open"))
    first_kept = msgspec.json.decode(kept[0].read_bytes().splitlines()[0])["eventId"]
    assert first_kept == str(batches[int(dropped) // 100][0].event_id)


def _state(pid: int) -> str:
    """The process's state letter (`Z` for a zombie), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """The relay children of `pid` (serve also runs the spool's fsync helper)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                with contextlib.suppress(OSError):
                    if b"relay" in (entry / "cmdline").read_bytes():
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
    assert b"relay" in Path(f"/proc/{relay}/cmdline").read_bytes()
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
async def test_relay_command_publishes_outboxes_and_serves_metrics(
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
    outbox = outbox_in(tmp_path / "spool", "api-worker-1")
    written = rows(300)
    outbox.append(written)
    outbox.close()
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [*ANALYTICS, "relay"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    STARTED.append(proc)
    messages = await take(queue, 300, within=30)
    assert sorted(m.message_id for m in messages) == sorted(str(r.event_id) for r in written)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as ops:
        scraped = (await ops.get("/metrics")).text
        assert f'analytics_events_published_total{{routing_key="{TRACKED}"}} 300.0' in scraped
        assert (await ops.get("/readyz")).json()["ready"] is True
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await connection.close()
