"""The one owner of ClickHouse access: async methods over clickhouse-connect's sync client.

chDB (the embedded default) has only a synchronous client, and the HTTP client is synchronous
too, so every call runs on a small thread pool and the event loop never waits on ClickHouse.
Each pool thread keeps its own client, which keeps per-connection session state apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from core.metrics import CLICKHOUSE_RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")
STREAM_CHUNK_BYTES = 4 << 20


def chdb_path(url: str) -> str:
    """`chdb://./data/ch` and `chdb:///abs/ch` both name a directory; the rest is literal."""
    return str(Path(unquote(url.removeprefix("chdb://"))).resolve())


def _open_client(url: str, database: str | None, cluster: str = "") -> Client:
    if url.startswith("chdb://"):
        Path(chdb_path(url)).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(
            interface="chdb", path=chdb_path(url), database=database
        )
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        interface=parsed.scheme,
        host=parsed.hostname,
        port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
        username=unquote(parsed.username or "default"),
        password=unquote(parsed.password or ""),
        database=database,
        # Concurrent queries from the pool must not share one server-side session.
        autogenerate_session_id=False,
        # On a cluster an insert returns once every shard holds its rows (not when they are
        # queued on this node for later sending): "stored" means what it says.
        settings={"distributed_foreground_insert": 1} if cluster else None,
    )


def delete_statement(table: str, condition: str, cluster: str = "") -> str:
    target = f"`{table}_local` ON CLUSTER `{cluster}`" if cluster else f"`{table}`"
    return f"DELETE FROM {target} WHERE {condition}"


# ClickHouse error codes that mean "this data cannot be stored", whoever retries it and when:
# values a column cannot hold or text that does not parse as its type. (src/Common/ErrorCodes.cpp)
DATA_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF (a truncated value)
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND (a decimal too big for its precision)
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
        469,  # VIOLATED_CONSTRAINT (a CHECK on the table)
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    }
)
_CODE = re.compile(r"\bCode:\s*(\d+)")


class WarehouseError(Exception):
    """ClickHouse refused or failed. The message is the error's first line, cut short:
    ClickHouse quotes the whole query back, and a batch's query holds thousands of ids.

    `permanent` is true when the refusal is about the data (a parse, type or range error):
    sending the same rows again can never succeed, so they must be isolated, not retried.
    Everything else (connection, timeout, too many parts, a detached table, memory, and any
    code we cannot prove is about the data) is temporary: holding data is recoverable,
    throwing good data away is not.
    """

    def __init__(self, error: BaseException) -> None:
        first = str(error).strip().split("\n", 1)[0]
        super().__init__(first if len(first) <= 300 else first[:300] + "…")
        code = getattr(error, "code", None)
        if not isinstance(code, int):
            found = _CODE.search(str(error))
            code = int(found.group(1)) if found else None
        self.code: int | None = code
        self.permanent = code in DATA_ERROR_CODES

    @property
    def temporary(self) -> bool:
        return not self.permanent


class Warehouse:
    """Async access to one ClickHouse database, embedded (chdb://) or a server (http[s]://)."""

    def __init__(self, url: str, database: str, *, cluster: str = "", threads: int = 4) -> None:
        self.url = url
        self.database = database
        self.cluster = cluster  # CLICKHOUSE_CLUSTER: tables are Distributed over `<name>_local`
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clickhouse")
        self._local = threading.local()
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb://")

    async def open(self) -> None:
        """Create the database if it is missing; later calls run inside it."""

        on_cluster = f" ON CLUSTER `{self.cluster}`" if self.cluster else ""

        def create() -> None:
            bootstrap = _open_client(self.url, None, self.cluster)
            try:
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`{on_cluster}")
            finally:
                bootstrap.close()

        await self._run(create)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = _open_client(self.url, self.database, self.cluster)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))
        except Exception as error:
            raise WarehouseError(error) from error

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self._run(lambda: self._client().command(sql, parameters=parameters))

    async def delete_where(
        self, table: str, condition: str, parameters: dict[str, Any] | None = None
    ) -> None:
        """Lightweight DELETE of the rows matching `condition`; on a cluster, from every
        shard's local table (a Distributed table takes no DELETE)."""
        await self.command(delete_statement(table, condition, self.cluster), parameters)

    async def rows(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        def query() -> list[tuple[Any, ...]]:
            rows = self._client().query(sql, parameters=parameters).result_rows
            return cast(list[tuple[Any, ...]], list(rows))

        result: list[tuple[Any, ...]] = await self._run(query)
        return result

    async def dicts(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        def query() -> list[dict[str, Any]]:
            return list(self._client().query(sql, parameters=parameters).named_results())

        result: list[dict[str, Any]] = await self._run(query)
        return result

    async def scalar(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        rows = await self.rows(sql, parameters)
        return rows[0][0] if rows else None

    async def insert_lines(
        self, table: str, columns: Sequence[str], data: bytes, *, dedup_token: str
    ) -> None:
        """Insert JSONCompactEachRow lines: ClickHouse parses them, not Python (4x faster)."""

        def insert() -> None:
            self._client().raw_insert(
                table,
                column_names=list(columns),
                insert_block=data,
                settings={
                    "insert_deduplication_token": dedup_token,
                    # A replayed block is pushed through the views too (not every server's
                    # default): each view's target keeps it once (sql/0031), and a view that
                    # failed the first time is filled now.
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    "date_time_input_format": "best_effort",
                },
                fmt="JSONCompactEachRow",
            )

        await self._run(insert)

    async def insert_isolating(
        self, table: str, columns: Sequence[str], data: bytes, *, dedup_token: str
    ) -> list[tuple[int, bytes, str]]:
        """`insert_lines`, except that when ClickHouse refuses the lines for their data they
        are halved until each refused line is alone: returns those lines (index, line,
        ClickHouse's reason); the rest are stored. The halves' tokens follow from the whole's,
        so the same lines split again store nothing twice. A temporary refusal raises
        WarehouseError as `insert_lines` does (then nothing is known to be stored)."""
        try:
            await self.insert_lines(table, columns, data, dedup_token=dedup_token)
            return []
        except WarehouseError as error:
            if not error.permanent:
                raise
            lines = data.splitlines(keepends=True)
            if len(lines) == 1:
                return [(0, data, str(error))]
        middle = len(lines) // 2
        first = await self.insert_isolating(
            table, columns, b"".join(lines[:middle]), dedup_token=f"{dedup_token}.0"
        )
        second = await self.insert_isolating(
            table, columns, b"".join(lines[middle:]), dedup_token=f"{dedup_token}.1"
        )
        return first + [(middle + at, line, reason) for at, line, reason in second]

    async def insert_raw(self, table: str, columns: Sequence[str], data: bytes, fmt: str) -> None:
        """Insert a file ClickHouse reads itself (Parquet, CSV...)."""

        def insert() -> None:
            self._client().raw_insert(table, column_names=list(columns), insert_block=data, fmt=fmt)

        await self._run(insert)

    async def formatted(self, sql: str, parameters: dict[str, Any], fmt: str) -> bytes:
        """The result as ClickHouse writes it in `fmt` (CSV, JSONEachRow, Parquet...)."""

        def query() -> bytes:
            data: bytes = self._client().raw_query(sql, parameters=parameters, fmt=fmt)
            return data

        result: bytes = await self._run(query)
        return result

    async def stream(
        self, sql: str, parameters: dict[str, Any], fmt: str
    ) -> AsyncGenerator[bytes, None]:
        """The result as ClickHouse writes it in `fmt` (a format without a header: CSV,
        JSONEachRow), in pieces of STREAM_CHUNK_BYTES cut anywhere, as ClickHouse makes them:
        a result of any size costs a few pieces of memory. One pool thread reads the stream
        for as long as it lasts (chDB's stream holds that thread's handle), handing pieces to
        the loop through a queue of two, so a slow consumer slows the reading."""
        loop = asyncio.get_running_loop()
        chunk_bytes = STREAM_CHUNK_BYTES
        pieces: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=2)
        abandoned = threading.Event()

        def hand(item: bytes | BaseException | None) -> bool:
            if abandoned.is_set():  # the consumer left: stop reading
                return False
            handed = asyncio.run_coroutine_threadsafe(pieces.put(item), loop)
            while True:
                try:
                    handed.result(timeout=0.2)
                    return True
                except FutureTimeout:
                    if abandoned.is_set():
                        handed.cancel()
                        return False

        def read() -> None:
            try:
                # A file-like either way: chDB's stream, or the HTTP response.
                source: Any = self._client().raw_stream(sql, parameters=parameters, fmt=fmt)
                with source:
                    while piece := source.read(chunk_bytes):
                        if not hand(piece):
                            return
            except Exception as error:
                hand(WarehouseError(error))
                return
            hand(None)

        reader = loop.run_in_executor(self._pool, read)
        try:
            while (item := await pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            abandoned.set()
            while not reader.done():  # let a reader blocked on a full queue see `abandoned`
                with contextlib.suppress(asyncio.QueueEmpty):
                    pieces.get_nowait()
                await asyncio.sleep(0.01)

    async def ping(self) -> bool:
        try:
            return bool(await self.scalar("SELECT 1") == 1)
        except WarehouseError:
            return False


async def retrying(call: Callable[[], Awaitable[T]], operation: str, *, ceiling: float = 30.0) -> T:
    """`call()` until it succeeds or fails permanently; temporary failures are retried with
    backoff (0.5 s doubling up to `ceiling`), each counted in `clickhouse_retries_total`."""
    backoff = 0.5
    while True:
        try:
            return await call()
        except WarehouseError as error:
            if error.permanent:
                raise
            CLICKHOUSE_RETRIES.labels(operation).inc()
            log.warning(
                "ClickHouse unavailable for %s (%s); retry in %.1fs", operation, error, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, ceiling)
