"""`analytics serve` as an unprivileged user from a read-only checkout, with only DATA_DIR
writable: what the image does (a root-owned /app, a non-root user, one volume)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from tests.conftest import AMQP_URL, take
from tests.service_process import ROOT, STARTED, env_for, query

NOBODY = 65534
# No supplementary groups, no capabilities, none to be gained.
SETPRIV = ["setpriv", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
# What the wheel ships: every package, and the migrations.
_WHEEL = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
SOURCE = (*_WHEEL["wheel"]["packages"], "sql")


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


def _link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links where the file system allows, else copied."""
    linked = subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True)
    if linked.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)


def _read_only(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        item.chmod(0o555 if item.is_dir() else 0o444)


@pytest.fixture
def stage() -> Iterator[Path]:
    """A world-readable folder holding a read-only copy of the checkout and of the installed
    packages (hard links where possible), and an empty DATA_DIR owned by the service user."""
    base = Path(tempfile.mkdtemp(prefix="analytics-unprivileged-"))
    base.chmod(0o755)
    try:
        checkout = base / "checkout"
        for name in SOURCE:
            shutil.copytree(
                ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        shutil.copy(ROOT / "pyproject.toml", checkout)
        _read_only(checkout)
        # The interpreter the tests run on, where the service user can reach it (pyenv's,
        # under /root, is not readable by others).
        interpreter = Path(sys.base_prefix)
        if not _reachable_by_others(interpreter):
            _link_tree(interpreter, base / "python")
        packages = base / "site-packages"
        _link_tree(Path(sysconfig.get_paths()["purelib"]), packages)
        # The editable install would put the writable checkout on the path.
        for pth in packages.glob("_editable_impl_*.pth"):
            pth.unlink()
        data = base / "data"
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(data, NOBODY, NOBODY)
        yield base
    finally:
        for item in [base, *base.rglob("*")]:
            if item.is_dir() and not item.is_symlink():
                item.chmod(0o755)
        shutil.rmtree(base)


async def test_serve_runs_unprivileged_from_a_read_only_checkout(
    stage: Path, isolated_processes: None
) -> None:
    data = stage / "data"
    env = env_for(data, DATA_DIR=str(data), HOME=str(stage / "checkout"))
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        env["AMQP_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "lomash.analytics.event.tracked")
    event_id = await asyncio.to_thread(_serve_one_beacon, stage, env)
    # Published by serve's relay child, as the same user, from DATA_DIR's tracking log.
    published = [m.message_id for m in await take(queue, 1, within=15)]
    assert published == [event_id], (stage / "service.log").read_text()[-3000:]
    await connection.close()


def _serve_one_beacon(stage: Path, env: dict[str, str]) -> str:
    copied = stage / "python"
    prefix = copied if copied.is_dir() else Path(sys.base_prefix)
    python = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    data = stage / "data"
    for derived in ("CLICKHOUSE_URL", "TRACKING_LOG_DIR", "STORAGE_URL"):
        del env[derived]  # all three follow DATA_DIR
    # The checkout first, then the packages (its relay child inherits both).
    path = f"{stage / 'checkout'}:{stage / 'site-packages'}"
    env.update(PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    if copied.is_dir():  # its libpython too, not the system's of another patch release
        env["LD_LIBRARY_PATH"] = str(copied / "lib")
    drop = [] if os.geteuid() != 0 else [*SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}"]
    log_path = stage / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*drop, str(python), "-m", "cli.main", "serve"],
            cwd=stage / "checkout",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    STARTED.append(proc)
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)

    event_id = str(uuid.uuid4())
    beacon = {
        "eventId": event_id,
        "eventType": "PAGEVIEW",
        "sessionId": str(uuid.uuid4()),
        "metadata": {"url": "https://lomashwood.co.uk/kitchens", "referrer": ""},
    }
    answer = httpx.post(f"{base}/v1/analytics/track", json=beacon, timeout=5)
    assert answer.status_code == 202, answer.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_path.read_text()

    assert query(data, f"SELECT count() FROM tracking_events WHERE event_id = '{event_id}'") == [
        ["1"]
    ]
    written = {p.relative_to(data).parts[0] for p in data.iterdir()}
    assert {"clickhouse", "tracking-log"} <= written, written
    if os.geteuid() == 0:
        assert (data / "clickhouse").stat().st_uid == NOBODY
    assert not list((stage / "checkout").rglob("__pycache__"))
    return event_id
