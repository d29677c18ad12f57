"""The one supervisor: a failing part is counted, tidied and started again after a doubling
wait, reset once the part is healthy; a stop cuts the wait short; a cancellation is never
taken for a failure."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from core.supervisor import Backoff, supervise


def restarts(component: str) -> float:
    labels = {"component": component}
    return REGISTRY.get_sample_value("component_restarts_total", labels) or 0.0


async def test_a_failing_part_is_started_again_with_doubling_waits() -> None:
    runs: list[float] = []
    tidied: list[str] = []
    backoff = Backoff(0.01, 0.04)

    async def run(waits: Backoff) -> None:
        runs.append(waits.seconds)
        if len(runs) < 4:
            raise ConnectionError(f"down {len(runs)}")

    async def tidy(error: Exception) -> None:
        tidied.append(str(error))

    before = restarts("test_part")
    await asyncio.wait_for(supervise("test_part", run, backoff=backoff, on_failure=tidy), timeout=5)
    assert runs == [0.01, 0.02, 0.04, 0.04]  # doubled, then held at the ceiling
    assert tidied == ["down 1", "down 2", "down 3"]
    assert restarts("test_part") == before + 3


async def test_healthy_resets_the_wait() -> None:
    waited: list[float] = []  # the wait each failure is followed by

    async def run(waits: Backoff) -> None:
        if len(waited) == 2:
            waits.reset()  # connected: the next failure waits the shortest time again
        waited.append(waits.seconds)
        if len(waited) < 5:
            raise OSError("again")

    await asyncio.wait_for(supervise("test_reset", run, backoff=Backoff(0.01, 1.0)), timeout=5)
    assert waited[:4] == [0.01, 0.02, 0.01, 0.02]


async def test_stop_cuts_the_wait_short_and_cancellation_passes() -> None:
    stop = asyncio.Event()

    async def failing(waits: Backoff) -> None:
        stop.set()
        raise RuntimeError("fails while stopping")

    started = asyncio.get_running_loop().time()
    await supervise("test_stop", failing, backoff=Backoff(30.0, 30.0), stop=stop)
    assert asyncio.get_running_loop().time() - started < 1  # not the 30 s wait

    async def forever(waits: Backoff) -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("test_cancel", forever))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts("test_cancel") == 0
