"""Fixtures: real ClickHouse (chDB in a temp dir, a fresh database per test), real Redis and
RabbitMQ, and the real HTTP server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import msgspec
import pytest
from arq.connections import ArqRedis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sanic import Sanic

from api.app import create_app
from api.connections import GuardedProtocol
from api.services import Services, app_services
from cli.assembly import Assembly
from consumers.consumer import DomainEventConsumer
from core.clickhouse import Warehouse
from core.migrations import migrate
from core.settings import Settings, load_settings
from ingest.relay import Relay
from tests.load import Load, LoadResult
from tracked.row import TrackingRow
from workers.context import JobContext

Sanic.test_mode = True

pytest_plugins = ["tests.service_process"]


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    # chDB opens one data path per process, so every test shares this one and isolates by
    # database name.
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture
def database() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"
DOWNLOAD_KEY = "test-download-key-made-for-the-tests-only-0123456789"
AUDIT_KEY = "test-erasure-audit-key-made-for-the-tests-only-01234"
# Flushed before every test. TEST_REDIS_URL moves it (another database number, say), so that two
# suites on one machine neither flush each other's keys nor run each other's jobs.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
GEOIP_DB = Path(__file__).parent / "data" / "GeoLite2-City-Test.mmdb"


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    client = ArqRedis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def exchange_name() -> AsyncIterator[str]:
    """A topic exchange and a consumer queue name of this test's own, deleted afterwards."""
    name = f"test.{uuid.uuid4().hex[:10]}"
    yield name
    await delete_broker_objects(name)


@pytest.fixture
async def listen(
    exchange_name: str,
) -> AsyncIterator[Callable[..., Awaitable[aio_pika.abc.AbstractQueue]]]:
    """`await listen(*routing_keys)`: a queue of the test's own on its exchange, bound to those
    keys and read with a connection of its own."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )

    async def bind(*routing_keys: str) -> aio_pika.abc.AbstractQueue:
        queue = await channel.declare_queue("", exclusive=True)
        for key in routing_keys:
            await queue.bind(exchange, key)
        return queue

    yield bind
    await connection.close()


async def take(
    queue: aio_pika.abc.AbstractQueue, n: int, within: float = 15.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Up to `n` messages from the queue (acked), waiting at most `within` seconds for them."""
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = asyncio.get_running_loop().time() + within
    while len(found) < n and asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        found.append(message)
    return found


async def delete_broker_objects(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)
        for queue in (f"{name}.q", f"{name}.q.dlq"):
            await channel.queue_delete(queue)
        await channel.exchange_delete(f"{name}.q.dlx")


@pytest.fixture
def settings(
    chdb_url: str, database: str, tmp_path: Path, redis: Redis, exchange_name: str
) -> Settings:
    return load_settings(
        {
            "PORT": str(free_port()),
            "CLICKHOUSE_URL": chdb_url,
            "CLICKHOUSE_DATABASE": database,
            "REDIS_URL": TEST_REDIS_URL,
            "AMQP_EXCHANGE": exchange_name,
            "AMQP_QUEUE": f"{exchange_name}.q",
            "STORAGE_URL": f"file://{tmp_path / 'objects'}",
            "TRACKING_LOG_DIR": str(tmp_path / "tracking-log"),
            "FLUSH_INTERVAL_MS": "50",
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_EVENTS": "100000000/minute",
            "GEOIP_DB": str(GEOIP_DB),
            "AUTH_JWT_SECRET": JWT_SECRET,
            "DOWNLOAD_SIGNING_KEY": DOWNLOAD_KEY,
            "ERASURE_AUDIT_KEY": AUDIT_KEY,
        }
    )


@dataclasses.dataclass(frozen=True)
class Schema:
    """The migrated schema, read once from a template database the migrations built: each
    table and view's CREATE statement (tables first) and the ledger's rows. Copying them into
    a test's database through the template's open connections costs a fifth of applying the
    migrations there (tests/test_migrations.py checks both give the same database)."""

    template: Warehouse
    creates: tuple[str, ...]
    ledger: tuple[tuple[int, str, str], ...]  # (version, name, checksum)

    async def copy_to(self, database: str) -> None:
        run, template = self.template.command, self.template.database
        await run(f"CREATE DATABASE `{database}`")
        for create in self.creates:
            await run(create.replace(f"{template}.", f"`{database}`."))
        # One insert: the ledger's rows come from the template's, the time they were applied now.
        await run(
            f"INSERT INTO `{database}`.schema_migrations (version, name, checksum)"
            f" SELECT version, name, checksum FROM `{template}`.schema_migrations FINAL"
        )


async def read_schema(warehouse: Warehouse) -> Schema:
    objects = await warehouse.rows(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase()"
        " ORDER BY engine = 'MaterializedView', name"
    )
    ledger = await warehouse.rows(
        "SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version"
    )
    return Schema(
        warehouse,
        tuple(str(create) for (create,) in objects),
        tuple((int(v), str(n), str(c)) for v, n, c in ledger),
    )


@pytest.fixture(scope="session")
def schema(chdb_url: str) -> Iterator[Schema]:
    # One thread: its one connection stays open across the tests' event loops.
    template = Warehouse(chdb_url, f"template_{uuid.uuid4().hex[:12]}", threads=1)

    async def build() -> Schema:
        await template.open()
        await migrate(template)
        return await read_schema(template)

    yield asyncio.run(build())
    asyncio.run(template.close())


@pytest.fixture
async def warehouse(settings: Settings, schema: Schema) -> AsyncIterator[Warehouse]:
    await schema.copy_to(settings.clickhouse_database)
    wh = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
    await wh.open()
    yield wh
    await wh.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
    await wh.close()


@pytest.fixture
async def fresh(schema: Schema, settings: Settings) -> AsyncIterator[Warehouse]:
    """A second database of the same schema, beside `warehouse` (the same data loaded from
    scratch, or inserted once, to compare with)."""
    name = f"{settings.clickhouse_database}_fresh"
    await schema.copy_to(name)
    wh = Warehouse(settings.clickhouse_url, name)
    await wh.open()
    yield wh
    await wh.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
    await wh.close()


class Running:
    """A started app: its base URL, an HTTP client and its services."""

    def __init__(self, app: Sanic, base_url: str, http: httpx.AsyncClient) -> None:  # type: ignore[type-arg]
        self.app = app
        self.base_url = base_url
        self.http = http

    @property
    def services(self) -> Services:
        return app_services(self.app)

    async def drain(self) -> None:
        """Place every event accepted so far, so assertions see every accepted row."""
        await self.services.ingest.writer.flush()


def relay_for(settings: Settings) -> Relay:
    root = Path(settings.tracking_log_dir).resolve()
    return Relay(root, settings.amqp_url, settings.amqp_exchange)


@pytest.fixture
async def make_server(
    warehouse: Warehouse,
) -> AsyncIterator[Callable[[Settings], Any]]:
    started: list[tuple[Any, httpx.AsyncClient]] = []
    relays: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> Running:
        # `serve`'s assembly; the relay runs beside it here as a task, as `analytics relay`
        # runs beside `analytics api` (serve's child process is tested in test_relay.py).
        app = create_app(
            settings, Assembly(settings, embedded=True, relay=False), f"t{uuid.uuid4().hex[:10]}"
        )
        server = await app.create_server(
            protocol=GuardedProtocol,
            host="127.0.0.1",
            port=settings.port,
            return_asyncio_server=True,
            access_log=False,
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10)
        started.append((server, http))
        # The relay beside it, as `analytics relay` runs beside `analytics api` (serve's child
        # process is tested in test_relay.py).
        stop = asyncio.Event()
        relay = relay_for(settings)
        relays.append((stop, asyncio.create_task(relay.run(stop))))
        return Running(app, f"http://127.0.0.1:{settings.port}", http)

    yield start
    for server, http in started:
        await http.aclose()
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()
    for stop, task in relays:
        stop.set()
        await task


@pytest.fixture
async def server(make_server: Callable[[Settings], Any], settings: Settings) -> Running:
    running: Running = await make_server(settings)
    return running


def event(**overrides: Any) -> dict[str, Any]:
    """A valid tracking event as a browser would send it."""
    body: dict[str, Any] = {
        "eventType": "PAGEVIEW",
        "sessionId": str(uuid.uuid4()),
        "userId": None,
        "metadata": {
            "url": "https://www.lomashwood.co.uk/kitchens/shaker-oak",
            "referrer": "https://www.google.com/",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            "deviceType": "desktop",
        },
        "properties": {"productId": "kit-shaker-oak", "price": 1249.5},
    }
    body.update(overrides)
    return body


def tracking_rows(n: int, url: str = "https://www.lomashwood.co.uk/kitchens") -> list[TrackingRow]:
    """`n` stored-shape tracking rows (what the tracking log and the retry queue hold)."""
    at = datetime(2026, 11, 27, 10, tzinfo=UTC)
    return [
        TrackingRow(
            event_id=uuid.uuid4(),
            event_type="PAGEVIEW",
            session_id=uuid.uuid4(),
            user_id=None,
            received_at=at,
            client_timestamp=None,
            occurred_at=at,
            url=url,
        )
        for _ in range(n)
    ]


def counter(name: str, **labels: str) -> float:
    """A Prometheus counter's value in this process (metrics are process-wide: compare a test's
    before and after, never an absolute value)."""
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


async def wait_for(predicate: Callable[[], Any], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-seconds",
        type=float,
        default=8.0,
        help="how long each fault in test_faults.py lasts (issue 7 asks for 60)",
    )


# Fixtures that reach a service or the machine beyond the test's own memory and temp files:
# ClickHouse (chDB), Redis, RabbitMQ, Chromium, a mount. A test using any of them, directly or
# through another fixture, is an integration test; one using none is a unit test of a pure
# part. Modules that start service processes by other means say so with `pytestmark`.
SERVICE_FIXTURES = frozenset(
    {
        "chdb_url",
        "redis",
        "exchange_name",
        "private_redis",
        "start_load",
        "small_disk",
        "browser",
        "live",  # test_hostile_input: the service in a process of its own
        "stage",  # test_unprivileged: the same, as nobody
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A fault test runs its fault under load, then waits for recovery: allow for both.
    seconds = config.getoption("--fault-seconds")
    for item in items:
        if item.get_closest_marker("fault"):
            item.add_marker(pytest.mark.timeout(150 + 4 * seconds))
        uses = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def fault_seconds(request: pytest.FixtureRequest) -> float:
    seconds: float = request.config.getoption("--fault-seconds")
    return seconds


class Outcome(msgspec.Struct):
    """One row of the fault table: what a fault or attack did to the events sent meanwhile."""

    case: str
    seconds: float
    sent: int
    accepted: int
    refused: int  # answered, but not 202
    unreached: int  # connection refused: never received
    unanswered: int  # sent, but no answer: the server may or may not have taken them
    stored: int
    duplicated: int
    lost: int  # answered 202 but not stored
    announced: int = -1  # distinct stored events published on event.tracked (-1: not checked)
    unannounced: int = 0  # stored but never published
    announced_twice: int = 0  # messages sent again (at least once: consumers drop them by id)
    note: str = ""

    @classmethod
    def of(
        cls,
        case: str,
        seconds: float,
        load: LoadResult,
        stored: list[str],
        published: list[str] | None = None,
    ) -> Outcome:
        """The row for `load`, given every event id `tracking_events` holds afterwards and,
        when checked, every trackingEventId published on event.tracked."""
        outcome = cls(
            case=case,
            seconds=seconds,
            sent=load.sent,
            accepted=len(load.accepted),
            refused=sum(count for status, count in load.statuses.items() if status != "202"),
            unreached=load.unreached,
            unanswered=load.unanswered,
            stored=len(stored),
            duplicated=len(stored) - len(set(stored)),
            lost=len(set(load.accepted) - set(stored)),
        )
        if published is not None:
            outcome.announced = len(set(published) & set(stored))
            outcome.unannounced = len(set(stored) - set(published))
            outcome.announced_twice = len(published) - len(set(published))
        return outcome


async def stored_ids(warehouse: Warehouse) -> list[str]:
    return [r[0] for r in await warehouse.rows("SELECT toString(event_id) FROM tracking_events")]


OUTCOMES: list[Outcome] = []


@pytest.fixture
def record_outcome() -> Callable[[Outcome], None]:
    return OUTCOMES.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    terminalreporter.section("faults and attacks: what happened to the events")
    head = ("case", "seconds", "sent", "accepted", "refused", "unreached", "unanswered")
    head += ("stored", "announced", "duplicated", "lost", "sent twice")
    terminalreporter.write_line(f"{head[0]:<42}" + "".join(f"{h:>11}" for h in head[1:]))
    for o in OUTCOMES:
        figures = (o.sent, o.accepted, o.refused, o.unreached, o.unanswered, o.stored)
        cells = "".join(f"{f:>11,}" for f in figures)
        cells += f"{o.announced:>11,}" if o.announced >= 0 else f"{'-':>11}"
        cells += "".join(f"{f:>11,}" for f in (o.duplicated, o.lost + o.unannounced))
        cells += f"{o.announced_twice:>11,}" if o.announced >= 0 else f"{'-':>11}"
        terminalreporter.write_line(f"{o.case:<42}{o.seconds:>11.0f}" + cells)
    for o in OUTCOMES:
        if o.note:
            terminalreporter.write_line(f"{o.case}: {o.note}")


@pytest.fixture
async def start_load(tmp_path: Path) -> AsyncIterator[Callable[[str, float], Load]]:
    loads: list[Load] = []

    def start(base_url: str, seconds: float) -> Load:
        loads.append(Load(base_url, seconds, tmp_path / f"load{len(loads)}.json"))
        return loads[-1]

    yield start
    for load in loads:
        load.kill()


class PrivateRedis:
    """A Redis of this test's own, to kill without disturbing the shared one. Configured as
    production must be for the retry queue: append-only file, fsync on every write."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._options = options  # after the defaults, so they override them
        self._proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self._directory.mkdir(exist_ok=True)
        self._proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(self._directory)),
                *self._options,
            ],
            stdout=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self.launch()
        client = Redis.from_url(self.url)
        try:

            async def answers() -> bool:
                with contextlib.suppress(Exception):
                    return bool(await client.ping())
                return False

            await wait_for(answers)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # SIGKILL: the clients see their connections reset
            self._proc.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis")
    await redis.start()
    yield redis
    redis.kill()


def rsa_key_pair() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh RS256 signing key and its public half in PEM (what AUTH_JWT_PUBLIC_KEY holds)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, public


def consumer_of(server: Running) -> DomainEventConsumer:
    """The domain-event consumer `serve` runs in-process."""
    consumer = server.services.consumer
    assert consumer is not None
    return consumer


def job_of(server: Running, warehouse: Warehouse) -> JobContext:
    """A job context on the server's clients, with the test's database."""
    return dataclasses.replace(JobContext.of(server.services.runtime), warehouse=warehouse)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of the test's own, to fill (CI runs as root; elsewhere: skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def fill(disk: Path) -> Path:
    """Fill the disk to its last byte; returns the file to delete to free it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


# The platform side of the domain-event tests: a publisher of its own, a consumer on the
# test's exchange, and waits on what is stored and dead-lettered.


class Platform:
    """The other services: a publisher on its own connection, as a separate client would be."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, routing_key: str, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        await self.exchange.publish(
            aio_pika.Message(data, content_type="application/json"), routing_key=routing_key
        )


async def started_consumer(
    settings: Settings, warehouse: Warehouse, redis: ArqRedis, batch_size: int = 100
) -> DomainEventConsumer:
    """A consumer on the test's exchange and queue, connected, small batches, short flushes."""
    running = DomainEventConsumer(
        amqp_url=settings.amqp_url,
        exchange=settings.amqp_exchange,
        warehouse=warehouse,
        redis=redis,
        report_timezone=settings.report_timezone,
        queue=settings.amqp_queue,
        batch_size=batch_size,
        flush_ms=50,
    )
    running.start()
    await asyncio.wait_for(running.connected.wait(), timeout=10)
    return running


async def stored_count(warehouse: Warehouse) -> int:
    return int(await warehouse.scalar("SELECT count() FROM analytics_events"))


async def until_stored(warehouse: Warehouse, n: int, within: float = 20) -> None:
    async def enough() -> bool:
        return await stored_count(warehouse) >= n

    await wait_for(enough, within=within)
    await asyncio.sleep(0.2)  # anything extra would arrive now


async def dead_letters(
    consumer: DomainEventConsumer, n: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(consumer.dead_letter_queue, durable=True)
        return await take(queue, n)


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True, passive=True)
        return int(queue.declaration_result.message_count or 0)


@pytest.fixture
async def platform(exchange_name: str) -> AsyncIterator[Platform]:
    """The other services, publishing on the test's exchange on a connection of their own."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    yield Platform(exchange)
    await connection.close()


@pytest.fixture
async def consumer(
    settings: Settings, warehouse: Warehouse, redis: ArqRedis, platform: Platform
) -> AsyncIterator[DomainEventConsumer]:
    running = await started_consumer(settings, warehouse, redis)
    yield running
    await running.close()
