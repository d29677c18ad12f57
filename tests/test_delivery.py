"""Nothing accepted is lost or stored twice: ClickHouse refusing writes, the retry queue and
its arq job, and `lomash.analytics.event.tracked` for every stored event."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import msgspec
import pytest
from arq import create_pool
from arq.worker import Worker
from redis.asyncio import Redis

import workers
from core.clickhouse import Warehouse
from core.settings import Settings
from tests.conftest import Running, event, free_port, job_of, take, tracking_rows, wait_for
from tracked.retry_queue import RetryBatch, RetryQueue
from tracked.row import TrackingRow
from workers.jobs import retry_failed_batches

TRACK = "/v1/analytics/track"


@pytest.fixture
async def tracked_queue(
    listen: Callable[..., Awaitable[aio_pika.abc.AbstractQueue]],
) -> aio_pika.abc.AbstractQueue:
    return await listen("lomash.analytics.event.tracked")


async def drain_queue(queue: aio_pika.abc.AbstractQueue, expected: int) -> list[dict[str, Any]]:
    return [msgspec.json.decode(m.body) for m in await take(queue, expected, within=20)]


async def send_load(server: Running, requests: int, per_request: int) -> list[str]:
    async def one() -> list[str]:
        response = await server.http.post(TRACK, json=[event() for _ in range(per_request)])
        assert response.status_code == 202
        ids: list[str] = response.json()["eventIds"]
        return ids

    ids: list[str] = []
    for start in range(0, requests, 10):
        for chunk in await asyncio.gather(*(one() for _ in range(min(10, requests - start)))):
            ids.extend(chunk)
    return ids


@pytest.mark.timeout(90)
async def test_clickhouse_refusing_writes_under_load_loses_nothing_and_doubles_nothing(
    server: Running,
    warehouse: Warehouse,
    redis: Redis,
    tracked_queue: aio_pika.abc.AbstractQueue,
) -> None:
    await server.services.runtime.publisher.connected.wait()
    # A real refusal: the table is gone from ClickHouse until it is attached again.
    await warehouse.command("DETACH TABLE tracking_events")
    ids = await send_load(server, requests=60, per_request=10)
    assert len(ids) == 600
    queue = RetryQueue(redis)

    async def handed_off() -> bool:
        return server.services.ingest.log.unread_rows == 0 and await queue.depth() > 0

    await wait_for(handed_off)
    await asyncio.sleep(1.5)  # let the arq job fail at least once against the missing table
    await warehouse.command("ATTACH TABLE tracking_events")

    async def all_stored() -> bool:
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") >= 600)

    await wait_for(all_stored, within=40)
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == 600
    stored_ids = await warehouse.rows("SELECT toString(event_id) FROM tracking_events")
    assert sorted(r[0] for r in stored_ids) == sorted(ids)

    async def queue_empty() -> bool:  # the job acknowledges a batch just after inserting it
        return await queue.depth() == 0

    await wait_for(queue_empty)

    messages = await drain_queue(tracked_queue, 600)
    assert sorted(m["payload"]["trackingEventId"] for m in messages) == sorted(ids)
    first = messages[0]
    assert first["eventType"] == "event-tracked"
    assert first["eventId"] == first["payload"]["trackingEventId"]
    assert set(first) == {"eventId", "eventType", "timestamp", "version", "payload"}
    assert first["payload"]["eventType"] == "PAGEVIEW"
    assert first["payload"]["properties"] == {"productId": "kit-shaker-oak", "price": 1249.5}


async def test_every_stored_event_is_published_once_with_its_envelope(
    server: Running, warehouse: Warehouse, tracked_queue: aio_pika.abc.AbstractQueue
) -> None:
    user = str(uuid.uuid4())
    response = await server.http.post(
        TRACK, json=[event(userId=user, eventType="BOOKING_START"), event()]
    )
    await server.drain()
    messages = await drain_queue(tracked_queue, 2)
    assert sorted(m["eventId"] for m in messages) == sorted(response.json()["eventIds"])
    booking = next(m for m in messages if m["payload"]["eventType"] == "BOOKING_START")
    payload = booking["payload"]
    assert payload["userId"] == user
    assert payload["sessionSeq"] == 1
    assert payload["url"] == "https://www.lomashwood.co.uk/kitchens/shaker-oak"
    assert {"occurredAt", "receivedAt", "deviceType", "country", "isBot"} <= set(payload)
    await asyncio.sleep(0.3)
    assert await tracked_queue.get(fail=False) is None  # nothing twice


async def test_rabbitmq_down_never_delays_the_202_and_the_backlog_is_counted(
    make_server,
    settings: Settings,
    warehouse: Warehouse,  # type: ignore[no-untyped-def]
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(settings, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    )
    started = asyncio.get_running_loop().time()
    response = await server.http.post(TRACK, json=[event() for _ in range(5)])
    assert response.status_code == 202
    assert asyncio.get_running_loop().time() - started < 0.5
    await server.drain()
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == 5
    tracking_log = server.services.ingest.log
    assert tracking_log is not None

    async def counted() -> bool:  # the relay cannot publish: the messages wait on disk
        return tracking_log.backlog == 5

    await wait_for(counted)
    metrics = (await server.http.get("/metrics")).text
    assert "analytics_publish_backlog 5.0" in metrics


async def test_standalone_worker_retries_a_queued_batch_once(
    settings: Settings, warehouse: Warehouse, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    (row,) = tracking_rows(1, url="https://www.lomashwood.co.uk/")
    batch = RetryBatch(
        table="tracking_events",
        columns=TrackingRow.__struct_fields__,
        token=uuid.uuid4().hex,
        data=msgspec.json.Encoder().encode_lines([row]),
        rows=1,
    )
    queue = RetryQueue(redis)
    await queue.push(batch)
    await queue.push(batch)  # the same batch twice, as after a crash between insert and done
    for name, value in {
        "CLICKHOUSE_URL": settings.clickhouse_url,
        "CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "REDIS_URL": settings.redis_url,
        "AMQP_EXCHANGE": settings.amqp_exchange,
        "STORAGE_URL": settings.storage_url,
        "DOWNLOAD_SIGNING_KEY": settings.download_signing_key,
    }.items():
        monkeypatch.setenv(name, value)
    ws = workers.WorkerSettings
    worker = Worker(
        functions=ws.functions,
        on_startup=ws.on_startup,
        on_shutdown=ws.on_shutdown,
        redis_settings=ws.redis_settings,
        burst=True,
        handle_signals=False,
    )
    pool = await create_pool(ws.redis_settings)
    await pool.enqueue_job("retry_failed_batches")
    await pool.aclose()
    await worker.async_run()
    await worker.close()
    assert await warehouse.scalar("SELECT count() FROM tracking_events") == 1
    assert await queue.depth() == 0


async def test_the_retry_job_isolates_rows_clickhouse_refuses_and_stores_the_rest_once(
    server: Running, warehouse: Warehouse, redis: Redis
) -> None:
    good, bad = tracking_rows(2), tracking_rows(1)
    bad[0].session_seq = "x"  # type: ignore[assignment]  # what its UInt32 column cannot hold
    lines = msgspec.json.Encoder().encode_lines(good[:1] + bad + good[1:])
    queue = RetryQueue(redis)
    await queue.push(
        RetryBatch(
            table="tracking_events",
            columns=TrackingRow.__struct_fields__,
            token=uuid.uuid4().hex,
            data=lines,
            rows=3,
        )
    )
    result = await retry_failed_batches({"job": job_of(server, warehouse)})
    assert result == "stored 2 rows"
    stored = {r[0] for r in await warehouse.rows("SELECT event_id FROM tracking_events")}
    assert stored == {r.event_id for r in good}
    assert await queue.depth() == 0
    (entry,) = await redis.lrange("lw:retry:refused", 0, -1)
    assert str(bad[0].event_id) in msgspec.json.decode(entry)[2]
