"""Slow clients in a process of their own: `python -m tests.slow_clients PORT N SECONDS OUT`.

Opens N connections to 127.0.0.1:PORT and drips a request's header one byte at a time (one
byte per connection every 0.5 s) for SECONDS, then writes what the server did to them: how
many were answered 503 at once, how many it closed later, how many were still open.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

REQUEST = b"POST /v1/analytics/track HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n" * 50


async def drip(port: int, seconds: float, outcome: dict[str, int]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        outcome["unreached"] += 1
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    sent = 0
    try:
        while loop.time() < deadline:
            writer.write(REQUEST[sent : sent + 1])
            sent += 1
            try:
                answer = await asyncio.wait_for(reader.read(200), timeout=0.5)
            except TimeoutError:
                continue
            if answer.startswith(b"HTTP/1.1 503"):
                outcome["refused"] += 1
            else:
                outcome["closed"] += 1  # EOF (or an error answer) from the server
            return
        outcome["open"] += 1
    except OSError:
        outcome["closed"] += 1
    finally:
        writer.close()


async def main(port: int, count: int, seconds: float) -> dict[str, int]:
    outcome = {"refused": 0, "closed": 0, "open": 0, "unreached": 0}
    await asyncio.gather(*(drip(port, seconds, outcome) for _ in range(count)))
    return outcome


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, count, seconds, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with open(out, "w") as handle:
        json.dump(asyncio.run(main(port, count, seconds)), handle)
