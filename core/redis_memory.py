"""The memory of the two Redis roles: how full each is, and whether it may evict keys.

The durable Redis (REDIS_URL) must never evict: a key it drops is a lost retry batch, job or
export, so it runs with `maxmemory-policy noeviction` and a full one refuses writes loudly
(the tracking log keeps what the retry queue could not take). The ephemeral one
(CACHE_REDIS_URL) may: under `allkeys-lru` an evicted session restarts its entry page and an
evicted claim lets a late retry be stored twice, while every event is still accepted and
stored. Both are read from INFO, which managed Redis services answer where CONFIG is disabled.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.metrics import REDIS_EVICTED_KEYS, REDIS_EVICTION_ALLOWED, REDIS_MEMORY_USED_RATIO

log = logging.getLogger(__name__)


class RedisRole(enum.StrEnum):
    DURABLE = "durable"
    EPHEMERAL = "ephemeral"


class MemoryState(NamedTuple):
    used_bytes: int
    max_bytes: int  # 0: no maxmemory
    policy: str
    evicted_keys: int  # since the Redis started

    @property
    def may_evict(self) -> bool:
        return self.policy != "noeviction"

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.max_bytes if self.max_bytes else 0.0


async def memory_state(client: Redis) -> MemoryState:
    # Two sections, two calls: INFO takes several only from Redis 7.
    info: dict[str, Any] = {**await client.info("memory"), **await client.info("stats")}
    return MemoryState(
        int(info.get("used_memory", 0)),
        int(info.get("maxmemory", 0)),
        str(info.get("maxmemory_policy", "noeviction")),
        int(info.get("evicted_keys", 0)),
    )


async def observe(role: RedisRole, client: Redis) -> MemoryState:
    """Read one Redis's state into the gauges (a scrape's doing)."""
    state = await memory_state(client)
    REDIS_EVICTED_KEYS.labels(role).set(state.evicted_keys)
    REDIS_EVICTION_ALLOWED.labels(role).set(1 if state.may_evict else 0)
    REDIS_MEMORY_USED_RATIO.labels(role).set(state.used_ratio)
    return state


async def warn_if_evicting(durable: Redis) -> None:
    """At start: say so when the durable Redis may drop keys (it cannot be refused: a managed
    Redis may not let us see or change its policy, and ingest must still start)."""
    try:
        state = await memory_state(durable)
    except (RedisError, OSError) as error:  # a Redis that cannot answer is readiness's to report
        log.debug("Redis memory state unreadable at start: %s", error)
        return
    if state.may_evict:
        log.warning(
            "REDIS_URL's Redis may evict keys (maxmemory-policy %s): the retry queue, jobs and"
            " export states can be lost under memory pressure; set noeviction there and put"
            " sessions and caches on CACHE_REDIS_URL (docs/operations.md, Redis)",
            state.policy,
        )
