"""The `analytics` command as an operator runs it: separate processes on their own chDB path."""

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from core.migrations import load_migrations
from tests.conftest import event, free_port
from tests.service_process import ANALYTICS, ROOT, STARTED, env_for, query, start_service, stop

pytestmark = pytest.mark.usefixtures("isolated_processes")


@pytest.mark.timeout(180)
def test_sigterm_writes_out_buffered_events_and_restart_stores_none_twice(tmp_path: Path) -> None:
    # Long timer and huge batches: every accepted event is still buffered at SIGTERM.
    proc, base = start_service(tmp_path, FLUSH_INTERVAL_MS="600000", FLUSH_MAX_ROWS="1000000")
    ids: list[str] = []
    with httpx.Client(base_url=base) as http:
        for i in range(40):
            single = http.post("/v1/analytics/track", json=event(properties={"n": i}))
            assert single.status_code == 202
            ids.append(single.json()["eventId"])
        batch = http.post("/v1/analytics/track", json=[event() for _ in range(100)])
        assert batch.status_code == 202
        ids.extend(batch.json()["eventIds"])
    assert stop(proc) == 0, (tmp_path / "service.log").read_text()

    proc, base = start_service(tmp_path)  # restart: migrations no-op, nothing replayed twice
    assert stop(proc, signal.SIGINT) == 0, (tmp_path / "service.log").read_text()

    rows = query(tmp_path, "SELECT toString(event_id) FROM tracking_events")
    stored = [r[0] for r in rows]
    assert len(stored) == 140
    assert sorted(stored) == sorted(ids)


def test_migrate_command_applies_then_reports_up_to_date(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    first = subprocess.run(
        [*ANALYTICS, "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(
        "applied: 0001_schema_migrations.sql, 0002_tracking_events.sql, "
    )
    again = subprocess.run(
        [*ANALYTICS, "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and again.stdout.strip() == "up to date"
    assert query(tmp_path, "SELECT count() FROM schema_migrations") == [
        [str(len(load_migrations()))]
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("CLICKHOUSE_URL", "postgres://x/y"),
        ("RATE_LIMIT", "lots"),
        ("DOWNLOAD_SIGNING_KEY", ""),  # file:// storage signs links: no key, no start
        ("DOWNLOAD_SIGNING_KEY", "short"),
        ("AUTH_JWT_SECRET", "secret"),  # under 32 bytes
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = env_for(tmp_path)
    env[variable] = value
    result = subprocess.run(
        [*ANALYTICS, "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bad setting {variable}: ")
    assert not (tmp_path / "clickhouse").exists()  # refused before touching anything


def test_api_command_refuses_embedded_clickhouse(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ANALYTICS, "api"],
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CLICKHOUSE_URL" in result.stderr and "analytics serve" in result.stderr


def test_sigterm_with_nothing_buffered_exits_cleanly(tmp_path: Path) -> None:
    proc, base = start_service(tmp_path, CLICKHOUSE_DATABASE=f"db_{uuid.uuid4().hex[:8]}")
    # Alive (/healthz) comes before ready: the publisher may still be connecting to RabbitMQ.
    deadline = time.monotonic() + 15
    while (ready := httpx.get(f"{base}/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.status_code == 200, ready.text
    assert stop(proc) == 0, (tmp_path / "service.log").read_text()


@pytest.mark.timeout(120)
async def test_consume_command_stores_domain_events_and_stops_on_sigterm(tmp_path: Path) -> None:
    import aio_pika
    import msgspec

    from tests.conftest import AMQP_URL
    from tests.domain_events import MAKERS

    metrics_port = free_port()
    queue_env = env_for(tmp_path, METRICS_PORT=str(metrics_port), METRICS_TOKEN="scrape-token")
    exchange_name = queue_env["AMQP_EXCHANGE"]
    log = (tmp_path / "consume.log").open("ab")
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [*ANALYTICS, "consume"], cwd=ROOT, env=queue_env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    STARTED.append(proc)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    # The consumer starts consuming after declaring and binding its queue.
    for _ in range(300):
        try:
            probe = await (await connection.channel()).declare_queue(
                queue_env["AMQP_QUEUE"], passive=True
            )
            if probe.declaration_result.consumer_count:
                break
        except aio_pika.exceptions.ChannelClosed:
            pass
        await asyncio.sleep(0.1)
    for key, make in MAKERS.items():
        await exchange.publish(aio_pika.Message(msgspec.json.encode(make())), routing_key=key)
    await asyncio.sleep(2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as ops:
        ready = await ops.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["consumer"]["alive"] is True
        assert (await ops.get("/metrics")).status_code == 401
        scraped = await ops.get("/metrics", headers={"authorization": "Bearer scrape-token"})
        assert "domain_consumer_up 1.0" in scraped.text
        assert (await ops.get("/healthz")).json() == {"status": "ok"}
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0, (tmp_path / "consume.log").read_text()
    await connection.close()
    assert query(tmp_path, "SELECT count() FROM analytics_events") == [[str(len(MAKERS))]]


def test_demo_fills_an_empty_install_that_then_serves_a_dashboard(tmp_path: Path) -> None:
    env = env_for(tmp_path, AUTH_JWT_SECRET="demo-secret-0123456789-abcdefghijklmnop")
    demo = subprocess.run(
        [*ANALYTICS, "demo", "--days", "5", "--sessions-per-day", "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert "funnels and dashboards rebuilt" in demo.stdout
    minted = subprocess.run(
        [*ANALYTICS, "token", "--role", "ADMIN"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), options={"verify_signature": False})
    assert uuid.UUID(claims["sub"]) and claims["role"] == "ADMIN"  # a user id, as exports need
    proc, base = start_service(tmp_path, AUTH_JWT_SECRET=env["AUTH_JWT_SECRET"])
    now = time.time()
    answer = httpx.get(
        f"{base}/v1/analytics/dashboard",
        params={
            "from": time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(now - 5 * 86400)),
            "to": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(now + 3600)),
        },
        headers={"authorization": f"Bearer {minted.stdout.strip()}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    widgets = answer.json()["widgets"]
    assert widgets["bookings"]["inRange"] > 0
    assert widgets["orders"]["count"] > 0
    assert set(widgets["conversion"]) == {"booking", "checkout"}
    assert stop(proc) == 0


def test_token_needs_the_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ANALYTICS, "token"],
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AUTH_JWT_SECRET" in result.stderr


@pytest.mark.timeout(120)
def test_standalone_worker_serves_metrics_and_readiness(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = env_for(tmp_path, METRICS_PORT=str(metrics_port))
    log = (tmp_path / "worker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    STARTED.append(proc)
    base = f"http://127.0.0.1:{metrics_port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        try:
            ready = httpx.get(f"{base}/readyz", timeout=2)
            if ready.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    assert ready.json()["checks"] == {"clickhouse": True, "redis": True}
    scraped = httpx.get(f"{base}/metrics").text
    # The same names as the API's: one set of definitions for every process.
    for name in (
        "aggregation_job_duration_ms",
        "export_generation_duration_ms",
        "clickhouse_retries",
    ):
        assert f"# TYPE {name}" in scraped, name
    assert stop(proc) == 0, (tmp_path / "worker.log").read_text()


def test_unreachable_clickhouse_stops_migrate_and_api_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = env_for(tmp_path, CLICKHOUSE_URL=f"http://analytics:hunter2-pw@127.0.0.1:{port}/x")
    for command in ("migrate", "api"):
        done = subprocess.run(
            [*ANALYTICS, command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done.stderr
        assert "migration failed: ClickHouse:" in done.stderr.splitlines()[-1]
        assert "hunter2-pw" not in done.stderr
