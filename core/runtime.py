"""The clients a process holds: opened once for the roles it plays, closed in reverse order.

Every process opens one: `analytics serve` (http, ingest, consumer, worker), `analytics api`
(http, ingest), `analytics consume` (consumer), the arq worker (worker) and the CLI commands
that touch data. What each role adds is built on top by its own package (the beacon path
in ingest, the consumer in consumers, the worker in workers); this is what they all share.
"""

from __future__ import annotations

import enum
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from arq.connections import ArqRedis

from core.clickhouse import Warehouse
from core.migrations import open_migrated
from core.publisher import EventPublisher
from core.redis_memory import warn_if_evicting
from core.settings import Settings
from core.storage import Storage, prepare_storage, storage_for

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    HTTP = "http"  # the admin API and ops endpoints
    INGEST = "ingest"  # the beacon path
    CONSUMER = "consumer"  # domain events from RabbitMQ
    WORKER = "worker"  # arq jobs and crons


# Roles that sign or serve download links, and so need the storage (and its signing key).
_STORAGE_ROLES = frozenset({Role.HTTP, Role.WORKER})


def redis_client(url: str) -> ArqRedis:
    # Short timeouts: when Redis is gone, ingest fails open quickly instead of hanging.
    client: ArqRedis = ArqRedis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    return client


@dataclass(slots=True)
class Runtime:
    settings: Settings
    roles: frozenset[Role]
    warehouse: Warehouse
    redis: ArqRedis  # the durable Redis, a redis.asyncio client that can also enqueue arq jobs
    cache: ArqRedis  # ephemeral state (CACHE_REDIS_URL): the same client when it is REDIS_URL
    publisher: EventPublisher
    _storage: Storage | None
    _stack: AsyncExitStack = field(repr=False)

    @classmethod
    async def open(
        cls, settings: Settings, roles: set[Role], *, redis: ArqRedis | None = None
    ) -> Runtime:
        """ClickHouse (created and migrated), the durable Redis (`redis` when the caller owns
        one, as arq's worker does) and the ephemeral one, the publisher (connecting in the
        background) and the storage."""
        stack = AsyncExitStack()
        try:
            warehouse, applied = await open_migrated(settings)
            stack.push_async_callback(warehouse.close)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            if redis is None:
                redis = redis_client(settings.redis_url)
                stack.push_async_callback(redis.aclose)
            await warn_if_evicting(redis)
            cache = redis
            if settings.ephemeral_redis_url != settings.redis_url:
                cache = redis_client(settings.ephemeral_redis_url)
                stack.push_async_callback(cache.aclose)
            publisher = EventPublisher(settings.amqp_url, settings.amqp_exchange)
            stack.push_async_callback(publisher.close)
            publisher.start()
            storage = storage_for(settings) if _STORAGE_ROLES & roles else None
            if storage is not None:
                await prepare_storage(settings, storage)
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            settings=settings,
            roles=frozenset(roles),
            warehouse=warehouse,
            redis=redis,
            cache=cache,
            publisher=publisher,
            _storage=storage,
            _stack=stack,
        )

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError(f"storage is not opened for roles {sorted(self.roles)}")
        return self._storage

    @property
    def storage_if_open(self) -> Storage | None:
        return self._storage

    async def close(self) -> None:
        """The publisher (its backlog given its grace), Redis, ClickHouse: reverse order."""
        await self._stack.aclose()
