"""Per-client rate limits on Redis: sliding-window counters, one round trip per burst.

Two budgets, checked together: requests per client (RATE_LIMIT, each request costs 1) and
events per client (RATE_LIMIT_EVENTS, a request costs its number of events), so a client cannot
send 100 times the events by packing them into arrays. Budgets are checked in that order; the
first one a request would exceed refuses it, and what it spent on the budgets before stays
spent (a refused request still counts as a request).

Requests that arrive while a check is in flight wait for the next one, so under load one
EVALSHA answers many requests, and each request needs one check for both budgets. Within a
burst each client's counters are read and written once, so a flood from one client costs
Redis little more than one request. (The
`limits` library makes one or more round trips per request and budget; measured here at 4,000
to 6,400 checks/s, below what the beacon endpoint serves.)
When Redis cannot be asked, requests are let through and counted: ingest must not stop.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import keys
from core.best_effort import warn_quietly
from core.metrics import RATE_LIMIT_FAIL_OPEN

WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class Budget(enum.IntEnum):
    """The budgets, in the order they are checked (the script's budget numbers, from 0)."""

    REQUESTS = 0
    EVENTS = 1


_PREFIXES = {Budget.REQUESTS: keys.RATE_REQUESTS, Budget.EVENTS: keys.RATE_EVENTS}

# KEYS: per client of the burst, per budget, the client's previous and current window counters.
# ARGV: the number of budgets B; per budget its limit, window_ms and elapsed_ms in the current
# window; then per request its client's number (from 1) and its B costs (0: not checked), in
# arrival order. Each client's counters are read once and written once per burst, however
# many of its requests the burst holds (a flood is one client's many requests).
# Returns per request two numbers: 0, 0 (allowed) or the refusing budget's number and the
# milliseconds until the request would fit.
_SCRIPT = """
local budgets = tonumber(ARGV[1])
local limit, window, elapsed = {}, {}, {}
for b = 1, budgets do
  limit[b] = tonumber(ARGV[2 + 3 * (b - 1)])
  window[b] = tonumber(ARGV[3 + 3 * (b - 1)])
  elapsed[b] = tonumber(ARGV[4 + 3 * (b - 1)])
end
local first = 2 + 3 * budgets
local per = budgets + 1
local requests = (#ARGV - first + 1) / per
local previous, count, spent, window_of = {}, {}, {}, {}
local answers = {}
for r = 1, requests do
  local at_arg = first + (r - 1) * per
  local client = tonumber(ARGV[at_arg])
  local refused, wait = 0, 0
  for b = 1, budgets do
    local cost = tonumber(ARGV[at_arg + b])
    if cost > 0 then
      local at = 2 * ((client - 1) * budgets + (b - 1))
      if count[at] == nil then
        previous[at] = tonumber(redis.call('GET', KEYS[at + 1]) or '0')
        count[at] = tonumber(redis.call('GET', KEYS[at + 2]) or '0')
        spent[at] = 0
        window_of[at] = window[b]
      end
      local weight = (window[b] - elapsed[b]) / window[b]
      if previous[at] * weight + count[at] + cost <= limit[b] then
        count[at] = count[at] + cost
        spent[at] = spent[at] + cost
      else
        refused = b
        if count[at] + cost > limit[b] or previous[at] == 0 then
          wait = window[b] - elapsed[b]
        else
          -- wait until the previous window's share has shrunk enough
          wait = (window[b] - elapsed[b]) - (limit[b] - cost - count[at]) * window[b] / previous[at]
          wait = math.max(1, math.ceil(wait))
        end
        break
      end
    end
  end
  answers[#answers + 1] = refused
  answers[#answers + 1] = wait
end
for at, cost in pairs(spent) do
  if cost > 0 then
    redis.call('INCRBY', KEYS[at + 2], cost)
    redis.call('PEXPIRE', KEYS[at + 2], window_of[at] * 2)
  end
end
return answers
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    budget: Budget
    seconds: int  # until the request would fit


@dataclass(frozen=True, slots=True)
class _Window:
    limit: int
    window_ms: int


class RateLimiter:
    def __init__(self, redis: Redis, requests: tuple[int, str], events: tuple[int, str]) -> None:
        """`requests` and `events`: each budget's limit and window (`second` ... `day`)."""
        self._windows = {
            Budget.REQUESTS: _Window(requests[0], WINDOW_SECONDS[requests[1]] * 1000),
            Budget.EVENTS: _Window(events[0], WINDOW_SECONDS[events[1]] * 1000),
        }
        self._script = redis.register_script(_SCRIPT)
        self._pending: list[tuple[str, int, asyncio.Future[Refusal | None]]] = []
        self._running = False
        self._skip_until = 0.0  # after a failure, fail open at once for a moment

    async def check(self, client: str, events: int) -> Refusal | None:
        """None when a request of `events` events may go on (both budgets spent), else which
        budget refuses it and for how long. `events=0` checks the request budget only."""
        future: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        self._pending.append((client, events, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                answers = await self._ask([(client, events) for client, events, _ in batch])
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._running = False

    async def _ask(self, requests: list[tuple[str, int]]) -> list[Refusal | None]:
        if time.monotonic() < self._skip_until:
            RATE_LIMIT_FAIL_OPEN.inc(len(requests))
            return [None] * len(requests)
        now_ms = int(time.time() * 1000)
        windows = [
            (budget, window, *divmod(now_ms, window.window_ms))
            for budget, window in self._windows.items()
        ]
        window_keys: list[str] = []
        args: list[int] = [len(windows)]
        for _, window, _, elapsed in windows:
            args += (window.limit, window.window_ms, elapsed)
        numbers: dict[str, int] = {}
        for client, events in requests:
            number = numbers.get(client)
            if number is None:
                number = numbers[client] = len(numbers) + 1
                for budget, _, current, _ in windows:
                    prefix = _PREFIXES[budget]
                    # One hash tag per client: all its windows share a slot on a Redis Cluster.
                    window_keys += (
                        keys.rate_window(prefix, client, current - 1),
                        keys.rate_window(prefix, client, current),
                    )
            args.append(number)
            args += (1 if budget is Budget.REQUESTS else events for budget, *_ in windows)
        try:
            flat = await self._script(keys=window_keys, args=args)
        except (RedisError, OSError) as error:  # Redis down or slow: fail open, counted
            RATE_LIMIT_FAIL_OPEN.inc(len(requests))
            self._skip_until = time.monotonic() + 1.0
            warn_quietly(
                "rate_limit",
                "rate limit check failed, letting %d requests through: %s; counted in"
                " rate_limit_fail_open_total",
                len(requests),
                error,
            )
            return [None] * len(requests)
        return [
            None
            if not int(refused)
            else Refusal(Budget(int(refused) - 1), max(1, math.ceil(int(wait_ms) / 1000)))
            for refused, wait_ms in zip(flat[::2], flat[1::2], strict=True)
        ]
