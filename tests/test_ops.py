"""The ops endpoints every process serves (core/ops.py): readiness from named checks, each
bounded in time; /metrics behind its token; the blueprint served alone on a port."""

import asyncio

import httpx
import pytest

from core import ops
from core.ops import OpsHooks, readiness, run_checks, serve_ops
from tests.conftest import free_port


async def test_a_check_that_fails_raises_or_hangs_is_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ops, "CHECK_TIMEOUT_SECONDS", 0.05)

    async def up() -> bool:
        return True

    async def down() -> bool:
        return False

    async def broken() -> bool:
        raise ConnectionError("refused")

    async def hanging() -> bool:
        await asyncio.sleep(10)
        return True

    found = await run_checks({"up": up, "down": down, "broken": broken, "hanging": hanging})
    assert found == {"up": True, "down": False, "broken": False, "hanging": False}
    ready, body = await readiness({"up": up}, lambda: {"published": 3})()
    assert ready and body == {"status": "ready", "checks": {"up": True}, "published": 3}


async def test_the_blueprint_served_alone_answers_the_three_paths() -> None:
    healthy = True

    async def check() -> bool:
        return healthy

    port = free_port()
    server = await serve_ops(
        "127.0.0.1", port, OpsHooks(readiness({"broker": check}), metrics_token="t"), role="test"
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/readyz")).json()["checks"] == {"broker": True}
            assert (await http.get("/metrics")).status_code == 401
            scraped = await http.get("/metrics", headers={"authorization": "Bearer t"})
            assert scraped.status_code == 200 and "component_restarts" in scraped.text
            assert (await http.get("/nothing")).status_code == 404
        assert server.port == port
    finally:
        await server.close()
