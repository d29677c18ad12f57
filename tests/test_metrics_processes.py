"""`analytics api`'s workers are separate processes: one scrape must show them all summed
(prometheus-client's multiprocess mode, files under DATA_DIR/metrics)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service_process import ROOT

pytestmark = pytest.mark.integration  # starts worker processes

# A manager as `analytics api` is one: it turns sharing on, then starts worker processes
# (spawned, as Sanic does); each counts, one exits; the manager scrapes once.
MANAGER = """
import multiprocessing, sys
from pathlib import Path
from core.metric_files import share_across_processes

def work(accepted, rate, drop, exits, go, done):
    from core import metrics
    metrics.EVENTS_ACCEPTED.inc(accepted)
    metrics.INGEST_RATE.set(rate)
    metrics.DROP_RATE.set(drop)
    metrics.drop(metrics.Drop.INVALID, 2)
    if exits:
        metrics.process_exiting()
    done.set()
    go.wait()

if __name__ == "__main__":
    share_across_processes(Path(sys.argv[1]))
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    workers = []
    for accepted, rate, drop, exits in ((3, 10.0, 0.002, False), (4, 20.0, 0.0005, False),
                                        (5, 40.0, 0.9, True)):
        done = spawn.Event()
        worker = spawn.Process(target=work, args=(accepted, rate, drop, exits, go, done))
        worker.start()
        assert done.wait(30)
        workers.append(worker)
    from core.metrics import exposition
    sys.stdout.write(exposition().decode())
    go.set()
    for worker in workers:
        worker.join(30)
"""


def scrape(directory: Path) -> dict[str, float]:
    script = directory.parent / "manager.py"  # spawned workers import __main__ from a file
    script.write_text(MANAGER)
    out = subprocess.run(
        [sys.executable, str(script), str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(out):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_one_scrape_sums_every_worker_process(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"left by a process of an earlier start")
    found = scrape(directory)
    # Counters of all three workers, the one that stopped included (a counter never goes back).
    assert found["tracking_events_accepted_total"] == 12
    assert found["tracking_events_dropped_total{reason=invalid}"] == 6
    # Gauges combine as each says: live rates summed, the drop rate the worst live worker's.
    assert found["tracking_ingest_rate_per_second"] == 30.0
    assert found["analytics_event_drop_rate"] == 0.002
    # The earlier start's file was cleared, not read.
    assert not (directory / "counter_99999.db").exists()


def test_single_process_exposition_is_the_plain_registry() -> None:
    from core import metrics

    assert not metrics.is_multiprocess()
    metrics.EVENTS_ACCEPTED.inc(0)
    assert b"tracking_events_accepted_total" in metrics.exposition()
