"""Soak: the service at about half its maximum rate for a long stretch (default 10 minutes).

First measures the maximum single-event rate with wrk for 10 s, then loads the service at half
of it in one-minute windows, sampling the server's resident memory every 5 s. Prints per
window: requests/s, p50/p99 latency, errors, RSS; then whether memory stayed flat and every
202 was stored.

    .venv/bin/python -m bench.soak [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import count_rows, event, free_port, service, wrk, wrk_script

TRACK = "/v1/analytics/track"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        cmd, env = service(data)
        port = free_port()
        proc = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, **env, "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        statm = Path(f"/proc/{proc.pid}/statm")
        one = wrk_script(data / "one.lua", event())
        top = wrk(base + TRACK, one, 10, args.connections)
        half = top["rps"] / 2
        paced = wrk_script(
            data / "paced.lua", event(), delay_ms=round(1000 * args.connections / half, 2)
        )
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(5):
                pages = int(statm.read_text().split()[1])
                samples.append(pages * resource.getpagesize() / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        answered = top["requests"]
        print(
            f"maximum {top['rps']:.0f} req/s; soaking at ~{half:.0f} req/s for {args.minutes} min"
        )
        print(f"{'minute':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'RSS MB':>9}")
        for minute in range(1, args.minutes + 1):
            window = wrk(base + TRACK, paced, 60, args.connections)
            answered += window["requests"]
            rss = samples[-1] if samples else float("nan")
            print(
                f"{minute:>6}{window['rps']:>9.0f}{window['p50_ms']:>9.2f}"
                f"{window['p99_ms']:>9.2f}{window['errors']:>8.0f}{rss:>9.0f}"
            )
        stop.set()
        proc.terminate()
        proc.wait(timeout=120)
        stored = count_rows(data)
    first = samples[: max(1, len(samples) // 5)]
    last = samples[-max(1, len(samples) // 5) :]
    print(
        f"RSS first fifth avg {sum(first) / len(first):.0f} MB, "
        f"last fifth avg {sum(last) / len(last):.0f} MB"
    )
    print(
        f"202s counted by wrk {answered}, rows stored {stored} (wrk stops counting at its "
        "deadline, so stored may exceed it by the in-flight requests)"
    )


if __name__ == "__main__":
    main()
