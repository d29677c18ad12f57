"""Best-effort side effects: a failure is swallowed, counted by operation and by what failed,
and never hides a cancellation."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from core.best_effort import best_effort, failed_dependency
from core.clickhouse import WarehouseError


def failures(operation: str, dependency: str) -> float:
    labels = {"operation": operation, "dependency": dependency}
    return REGISTRY.get_sample_value("analytics_side_effect_failures_total", labels) or 0.0


def redis_failures(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("redis_unavailable_total", labels) or 0.0


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (RedisConnectionError("refused"), "redis"),
        (WarehouseError("table detached"), "clickhouse"),
        (TimeoutError(), "timeout"),
        (OSError(28, "No space left on device"), "os"),
        (ValueError("bad"), "other"),
    ],
)
async def test_a_failure_is_counted_by_what_failed(error: Exception, dependency: str) -> None:
    operation = f"test_{dependency}"
    before, redis_before = failures(operation, dependency), redis_failures(operation)
    async with best_effort(operation) as step:
        raise error
    assert step.failed
    assert failures(operation, dependency) == before + 1
    # The Redis counter counts Redis only: a ClickHouse failure no longer shows as Redis.
    assert redis_failures(operation) == redis_before + (dependency == "redis")
    assert failed_dependency(error) == dependency


async def test_success_counts_nothing_and_cancellation_passes_through() -> None:
    async with best_effort("test_ok") as step:
        pass
    assert not step.failed and failures("test_ok", "other") == 0
    with pytest.raises(asyncio.CancelledError):
        async with best_effort("test_cancel"):
            raise asyncio.CancelledError
