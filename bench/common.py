"""What the benchmark scripts share: ports, starting servers, wrk, reading /metrics."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def event() -> dict[str, object]:
    return {
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
wrk.body = [=[%s]=]
%s
"""


def wrk_script(path: Path, body: object, delay_ms: float | None = None) -> Path:
    delay = f"function delay() return {delay_ms} end" if delay_ms else ""
    path.write_text(LUA % (json.dumps(body), delay))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PIDS: dict[str, int] = {}  # base URL -> the process serving it


def rss_mb(base: str) -> float:
    """Resident memory of the process serving `base` and of its children (the relay), in MB."""
    root = PIDS[base]
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if int(entry.name) == root or parent == root:
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> tuple[str, int, float] | None:
    """A /proc stat file's command name, parent pid and CPU seconds (user + system)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_seconds(base: str) -> Counter[str]:
    """CPU seconds used so far on the whole machine, split into the parts that share its cores:
    the process serving `base` (its event loop thread, then its other threads: chDB and the
    fsync helper), its children (the relay), Redis, RabbitMQ, the kernel's threads (writeback,
    fsync) and the rest. Differences of two calls give what a run cost; the load generator
    (wrk) starts and exits between them, so it is not counted."""
    root = PIDS[base]
    parts: Counter[str] = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _stat(entry / "stat")
        if found is None:
            continue
        name, parent, seconds = found
        pid = int(entry.name)
        if pid == root:
            for task in (entry / "task").iterdir():
                thread = _stat(task / "stat")
                if thread is not None:
                    loop = int(task.name) == root
                    parts["service: event loop" if loop else "service: other threads"] += thread[2]
        elif parent == root:
            parts["relay (child process)"] += seconds
        elif name == "redis-server":
            parts["Redis"] += seconds
        elif name == "beam.smp":
            parts["RabbitMQ"] += seconds
        elif parent == 2:  # kthreadd's children
            parts["kernel threads"] += seconds
        else:
            parts["other processes"] += seconds
    return parts


@contextmanager
def running(cmd: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in cmd],
        cwd=ROOT,
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = proc.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd} exited with {proc.returncode}")
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{cmd} did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def service(data: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "cli.main", "serve"], {
        "CLICKHOUSE_URL": f"chdb://{data / 'clickhouse'}",
        "TRACKING_LOG_DIR": str(data / "tracking-log"),
        "RATE_LIMIT": "100000000/minute",
        "RATE_LIMIT_EVENTS": "100000000000/minute",
        "STORAGE_URL": f"file://{data / 'objects'}",
        "DOWNLOAD_SIGNING_KEY": secrets.token_urlsafe(48),
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        "AMQP_EXCHANGE": f"bench.{uuid.uuid4().hex[:8]}",
        **env,
    }


def noop() -> tuple[list[str], dict[str, str]]:
    return [sys.executable, str(ROOT / "bench" / "noop_app.py"), "{port}"], {}


def wrk(
    url: str, script: Path, seconds: int, connections: int, threads: int = 1
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"unexpected wrk output:\n{out}")
        return match

    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {
        q: float(m.group(1)) * scale[m.group(2)]
        for q in ("50", "99")
        if (m := re.search(rf"{q}%\s+([\d.]+)(us|ms|s)\b", out))
    }
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
        "requests": int(find(r"(\d+) requests in").group(1)),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
    }


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(base: str, name: str, q: float) -> float:
    """The upper bound of the bucket holding quantile q (Prometheus-style, no interpolation)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


def count_rows(data: Path) -> int:
    script = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(\n"
        "    interface='chdb', path=sys.argv[1], database='analytics')\n"
        "print(c.command('SELECT count() FROM tracking_events'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(data / "clickhouse")],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95 of milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[math.ceil(len(ordered) * 0.95) - 1]


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[list[float], Any]:
    """Milliseconds of each of `runs` calls, and the last call's result."""
    samples, found = [], None
    for _ in range(runs):
        started = time.perf_counter()
        found = await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, found
