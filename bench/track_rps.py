"""Requests/s of POST /v1/analytics/track (one event per request) against a no-op Sanic handler.

Both servers run one process on loopback and are loaded by `wrk` in the same run, so the ratio
holds even on a noisy machine. At the end every accepted event is counted in ClickHouse.

    .venv/bin/python bench/track_rps.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

EVENT = {
    "eventType": "PAGEVIEW",
    "sessionId": str(uuid.uuid4()),
    "userId": None,
    "metadata": {
        "url": "https://www.lomashwood.co.uk/kitchens/shaker-oak",
        "referrer": "https://www.google.com/",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
        "deviceType": "desktop",
    },
    "properties": {"productId": "kit-shaker-oak", "price": 1249.5},
}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local accepted = 0
local other = 0
response = function(status, headers, body)
  if status == 202 then accepted = accepted + 1 else other = other + 1 end
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            httpx.post(f"{base}/v1/analytics/track", json=EVENT, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def run_wrk(base: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"{base}/v1/analytics/track",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": rps,
        "requests": total,
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def count_rows(data: Path) -> int:
    script = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client("
        "interface='chdb', path=sys.argv[1], database='analytics')\n"
        "print(c.command('SELECT count() FROM tracking_events'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(data / "clickhouse")],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        script = data / "post.lua"
        script.write_text(LUA % json.dumps(EVENT))
        results: dict[str, dict[str, float]] = {}
        for name, cmd, extra_env in (
            ("noop", [sys.executable, str(ROOT / "bench" / "noop_app.py")], {}),
            (
                "service",
                [sys.executable, "-m", "cli.main", "serve"],
                {"CLICKHOUSE_URL": f"chdb://{data / 'clickhouse'}"},
            ),
        ):
            port = free_port()
            env = {**os.environ, "PORT": str(port), **extra_env}
            args_port = [str(port)] if name == "noop" else []
            proc = subprocess.Popen(
                [*cmd, *args_port],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                wait_up(base, proc)
                warm = run_wrk(base, script, 2, args.connections)
                results[name] = run_wrk(base, script, args.seconds, args.connections)
                # wrk counts only completed responses; all were 202 when errors == 0.
                posted = 1 + warm["requests"] + results[name]["requests"]
                errors = warm["errors"] + results[name]["errors"]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

        stored = count_rows(data)
        accepted = posted - errors
        noop, service = results["noop"], results["service"]
        print(f"{'server':<10}{'req/s':>12}{'p99 ms':>10}{'non-202':>10}")
        for name, r in results.items():
            print(f"{name:<10}{r['rps']:>12.0f}{r['p99_ms']:>10.2f}{r['errors']:>10.0f}")
        print(f"ratio service/noop: {service['rps'] / noop['rps']:.2f}")
        # wrk stops counting at its deadline while the last in-flight requests may still land,
        # so stored can exceed the answered count by up to the number of connections.
        print(f"service: {accepted} answered 202 (warm-up included), {stored} rows stored")


if __name__ == "__main__":
    main()
