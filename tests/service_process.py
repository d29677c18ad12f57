"""Running `analytics serve` as an operator does: its own process, its own chDB path, read
back from a fresh process once it has stopped."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUDIT_KEY, DOWNLOAD_KEY, TEST_REDIS_URL, delete_broker_objects, free_port

ROOT = Path(__file__).resolve().parent.parent
ANALYTICS = [sys.executable, "-m", "cli.main"]

QUERY = """
import sys, json, clickhouse_connect
client = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1], database="analytics")
print(json.dumps([list(map(str, r)) for r in client.query(sys.argv[2]).result_rows]))
client.close()
"""


def query(data: Path, sql: str) -> list[list[str]]:
    """Read a stopped service's chDB data from a fresh process (a path opens in one process)."""
    out = subprocess.run(
        [sys.executable, "-c", QUERY, str(data / "clickhouse"), sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: list[list[str]] = json.loads(out.stdout)
    return result


def env_for(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.isupper() and not k.startswith("PYTEST")}
    name = f"test.process.{uuid.uuid4().hex[:8]}"
    EXCHANGES.append(name)
    env.update(
        CLICKHOUSE_URL=f"chdb://{data / 'clickhouse'}",
        PORT=str(free_port()),
        REDIS_URL=TEST_REDIS_URL,
        TRACKING_LOG_DIR=str(data / "tracking-log"),
        RATE_LIMIT="100000/minute",
        RATE_LIMIT_EVENTS="100000000/minute",
        STORAGE_URL=f"file://{data / 'objects'}",
        DOWNLOAD_SIGNING_KEY=DOWNLOAD_KEY,
        ERASURE_AUDIT_KEY=AUDIT_KEY,
        AMQP_EXCHANGE=name,
        AMQP_QUEUE=f"{name}.q",
    )
    env.update(extra)
    return env


STARTED: list[subprocess.Popen[bytes]] = []


def start_service(data: Path, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    env = env_for(data, **extra)
    # A file, not a pipe: a chatty process must never block on a full pipe.
    log = (data / "service.log").open("ab")
    offset = log.tell()
    proc = subprocess.Popen(
        [*ANALYTICS, "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    STARTED.append(proc)
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data / "service.log").read_text()
        # Sanic answers a little before it installs its signal handlers; "Worker ready" is
        # logged after, and a signal sent before it would be lost.
        ready = b"Worker ready" in (data / "service.log").read_bytes()[offset:]
        try:
            if ready and httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("service did not start")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=60)


EXCHANGES: list[str] = []


@pytest.fixture
async def isolated_processes(redis: object) -> AsyncIterator[None]:
    """An empty Redis database (the `redis` fixture flushes it); no process or broker
    objects left behind."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while EXCHANGES:
        await delete_broker_objects(EXCHANGES.pop())
