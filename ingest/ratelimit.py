"""Per-client rate limits on Redis: sliding-window counters, one round trip per burst.

Two budgets use it: requests per client (RATE_LIMIT, each request costs 1) and events per
client (RATE_LIMIT_EVENTS, a request costs its number of events), so a client cannot send
100 times the events by packing them into arrays.

Requests that arrive while a check is in flight wait for the next one, so under load one
EVALSHA answers many requests. (The `limits` library makes one or more round trips per request;
measured here at 4,000 to 6,400 checks/s, below what the beacon endpoint serves.)
When Redis cannot be asked, requests are let through and counted: ingest must not stop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import keys
from core.metrics import RATE_LIMIT_FAIL_OPEN

log = logging.getLogger(__name__)

WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# KEYS: per request, its client's previous and current window counters; ARGV: limit,
# window_ms, elapsed_ms in the current window, then per request its cost. Repeats allowed, in
# order. Returns per request 0 (allowed) or the milliseconds until it would be.
_SCRIPT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local elapsed = tonumber(ARGV[3])
local weight = (window - elapsed) / window
local answers = {}
for r = 1, #ARGV - 3 do
  local previous_key, current_key = KEYS[2 * r - 1], KEYS[2 * r]
  local cost = tonumber(ARGV[3 + r])
  local previous = tonumber(redis.call('GET', previous_key) or '0')
  local count = tonumber(redis.call('GET', current_key) or '0')
  if previous * weight + count + cost <= limit then
    redis.call('INCRBY', current_key, cost)
    redis.call('PEXPIRE', current_key, window * 2)
    answers[#answers + 1] = 0
  elseif count + cost > limit or previous == 0 then
    answers[#answers + 1] = window - elapsed
  else
    -- wait until the previous window's share has shrunk enough
    local wait = (window - elapsed) - (limit - cost - count) * window / previous
    answers[#answers + 1] = math.max(1, math.ceil(wait))
  end
end
return answers
"""


class RateLimiter:
    def __init__(
        self, redis: Redis, limit: int, per: str, prefix: str = keys.RATE_REQUESTS
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._prefix = prefix
        self._window_ms = WINDOW_SECONDS[per] * 1000
        self._script = redis.register_script(_SCRIPT)
        self._pending: list[tuple[str, int, asyncio.Future[int]]] = []
        self._running = False
        self._skip_until = 0.0  # after a failure, fail open at once for a moment

    async def retry_after(self, client: str, cost: int = 1) -> int:
        """0 when the request may go on, else the seconds the client should wait."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((client, cost, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                answers = await self._ask([(client, cost) for client, cost, _ in batch])
                for (_, _, future), wait_ms in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(0 if wait_ms == 0 else max(1, math.ceil(wait_ms / 1000)))
        finally:
            self._running = False

    async def _ask(self, clients: list[tuple[str, int]]) -> list[int]:
        if time.monotonic() < self._skip_until:
            RATE_LIMIT_FAIL_OPEN.inc(len(clients))
            return [0] * len(clients)
        now_ms = int(time.time() * 1000)
        current, elapsed = divmod(now_ms, self._window_ms)
        window_keys: list[str] = []
        args: list[int] = [self._limit, self._window_ms, elapsed]
        for client, cost in clients:
            # One hash tag per client: its two windows share a slot on a Redis Cluster.
            window_keys += [
                keys.rate_window(self._prefix, client, current - 1),
                keys.rate_window(self._prefix, client, current),
            ]
            args.append(cost)
        try:
            answers = await self._script(keys=window_keys, args=args)
            return [int(a) for a in answers]
        except (RedisError, OSError) as error:  # Redis down or slow: fail open, counted
            RATE_LIMIT_FAIL_OPEN.inc(len(clients))
            self._skip_until = time.monotonic() + 1.0
            log.warning(
                "rate limit check failed, letting %d requests through: %s", len(clients), error
            )
            return [0] * len(clients)
