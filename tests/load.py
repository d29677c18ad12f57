"""A load generator in its own process, so that it never shares an event loop with the service
under test: `python -m tests.load URL SECONDS OUT.json`.

Keeps `--connections` requests in flight, each an array of `--per-request` events, for SECONDS
(or until SIGTERM), then writes what happened: events sent, the eventIds answered 202, counts
per status, the events whose connection was refused (never received), and those whose request
went out but got no answer (fate unknown: the server may or may not have taken them).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent


class LoadResult(msgspec.Struct):
    sent: int
    accepted: list[str]
    statuses: dict[str, int]
    unreached: int
    unanswered: int
    seconds: float


def event(n: int) -> dict[str, object]:
    return {
        "eventType": "PAGEVIEW",
        "sessionId": str(uuid.uuid4()),
        "userId": None,
        "metadata": {
            "url": f"https://www.lomashwood.co.uk/kitchens/shaker-oak?n={n}",
            "referrer": "https://www.google.com/",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            "deviceType": "desktop",
        },
        "properties": {"productId": "kit-shaker-oak", "price": 1249.5},
    }


async def run(url: str, seconds: float, connections: int, per_request: int) -> LoadResult:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    deadline = started + seconds
    accepted: list[str] = []
    statuses: Counter[str] = Counter()
    sent = unreached = unanswered = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async def one_connection(http: httpx.AsyncClient) -> None:
        nonlocal sent, unreached, unanswered
        while not stop.is_set() and time.monotonic() < deadline:
            body = [event(sent + i) for i in range(per_request)]
            sent += per_request
            try:
                answer = await http.post("/v1/analytics/track", json=body)
            except httpx.ConnectError:
                unreached += per_request
                await asyncio.sleep(0.05)  # a refused connection fails at once; do not spin
                continue
            except httpx.HTTPError:
                unanswered += per_request
                continue
            statuses[str(answer.status_code)] += 1
            if answer.status_code == 202:
                accepted.extend(answer.json()["eventIds"])

    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        await asyncio.gather(*(one_connection(http) for _ in range(connections)))
    return LoadResult(
        sent, accepted, dict(statuses), unreached, unanswered, time.monotonic() - started
    )


class Load:
    """`tests/load.py` running against `base_url` in its own process."""

    def __init__(self, base_url: str, seconds: float, out: Path) -> None:
        self._out = out
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.load", base_url, str(seconds), str(out)], cwd=ROOT
        )

    def stop(self) -> None:
        self._proc.send_signal(signal.SIGTERM)

    async def result(self) -> LoadResult:
        code = await asyncio.to_thread(self._proc.wait, 120)
        assert code == 0, "the load generator failed"
        return msgspec.json.decode(self._out.read_bytes(), type=LoadResult)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("seconds", type=float)
    parser.add_argument("out", type=Path)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.seconds, args.connections, args.per_request))
    args.out.write_bytes(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
