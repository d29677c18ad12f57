"""Slow and greedy clients: connections are capped per client address and in all (a 503 and
a closed socket past the cap), and a request must arrive whole within a deadline, so 1,000
connections dripping a byte at a time from one address never keep other clients out."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import event
from tests.service_process import ROOT, start_service, stop


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("isolated_processes")
async def test_a_thousand_dripping_connections_never_keep_other_clients_out(
    tmp_path: Path,
) -> None:
    proc, base = start_service(
        tmp_path, MAX_CONNECTIONS_PER_CLIENT="64", REQUEST_DEADLINE_SECONDS="2"
    )
    port = base.rsplit(":", 1)[1]
    out = tmp_path / "slow.json"
    slow = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-m", "tests.slow_clients", port, "1000", "8", str(out)], cwd=ROOT
    )
    await asyncio.sleep(1.0)  # the drip is under way
    latencies: list[float] = []
    statuses: set[int] = set()
    # Another client (another address on the loopback) keeps sending beacons meanwhile.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=base, transport=transport, timeout=5) as other:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            started = time.perf_counter()
            answer = await other.post("/v1/analytics/track", json=event(eventId=str(uuid.uuid4())))
            latencies.append(time.perf_counter() - started)
            statuses.add(answer.status_code)
            await asyncio.sleep(0.02)
    assert await asyncio.to_thread(slow.wait, 60) == 0
    outcome = json.loads(out.read_text())
    refused = metric(base, 'http_connections_refused_total{reason="per_address"}')
    cut = metric(base, 'http_connections_refused_total{reason="deadline"}')
    assert stop(proc) == 0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nslow clients: {outcome}; beacons from another address: {len(latencies)}, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
        f"refused per address {refused:.0f}, cut at the deadline {cut:.0f}"
    )
    assert statuses == {202}
    assert p99 <= 0.100, f"p99 {p99 * 1000:.0f} ms"
    assert outcome["refused"] >= 1000 - 64 and refused >= 1000 - 64
    assert outcome["open"] == 0, "a dripping connection outlived the deadline"
    assert cut >= 1


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("isolated_processes")
def test_past_the_total_cap_connections_get_503_and_the_service_answers_again(
    tmp_path: Path,
) -> None:
    proc, base = start_service(tmp_path, MAX_CONNECTIONS="16", MAX_CONNECTIONS_PER_CLIENT="1000")
    port = int(base.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    try:
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        answer = extra.recv(200)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):  # the held ones are gone: a new client is served again
        try:
            if httpx.post(f"{base}/v1/analytics/track", json=event(), timeout=5).status_code == 202:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the service did not answer again")
    assert metric(base, 'http_connections_refused_total{reason="total"}') >= 1
    assert stop(proc) == 0


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("isolated_processes")
def test_a_body_dripped_a_byte_at_a_time_is_cut_at_the_deadline_and_a_slow_answer_is_not(
    tmp_path: Path,
) -> None:
    proc, base = start_service(tmp_path, REQUEST_DEADLINE_SECONDS="1")
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/analytics/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    sock.settimeout(0.4)
    started, closed = time.monotonic(), False
    while time.monotonic() - started < 6:
        try:
            sock.sendall(b" ")
            if sock.recv(200) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    sock.close()
    assert closed and time.monotonic() - started < 4, "the dripped body was not cut"
    # A kept-alive connection idle past the deadline is not cut: no request is arriving.
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.post("/v1/analytics/track", json=event()).status_code == 202
        time.sleep(1.5)
        assert client.post("/v1/analytics/track", json=event()).status_code == 202
    assert stop(proc) == 0
