"""The spool's durability step: a group of appends written by the loop, fsynced by the helper
process, then handed to the writer and answered; without the helper, the loop fsyncs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.clickhouse import Warehouse
from core.rows import TrackingRow
from ingest.spool import FSYNCER, open_spool
from ingest.writer import BatchWriter
from tests.conftest import tracking_rows as rows


def writer_on(warehouse: Warehouse) -> BatchWriter[TrackingRow]:
    # Not started: it only buffers what the spool hands it.
    return BatchWriter(warehouse, "tracking_events", TrackingRow, max_rows=10_000, interval_ms=1000)


async def test_appends_are_answered_once_fsynced_and_then_in_the_writer(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    writer = writer_on(warehouse)
    spool, leftovers = open_spool(str(tmp_path / "spool"), writer)
    assert leftovers == []
    await spool.start()
    assert spool._syncer.running
    await spool.append(rows(3))
    await spool.append(rows(2))
    assert writer.pending_rows == 5
    (segment,) = spool.directory.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 5

    # The helper gone: the loop fsyncs itself, and nothing accepted is lost.
    process = spool._syncer._process
    assert process is not None
    process.kill()
    await process.wait()
    assert not spool._syncer.running
    await spool.append(rows(4))
    assert writer.pending_rows == 9
    await spool.close()
    spool.release()


def test_the_helper_answers_each_path_in_order_and_names_a_failure(tmp_path: Path) -> None:
    present = tmp_path / "segment.jsonl"
    present.write_bytes(b"{}\n")
    answers = subprocess.run(
        [sys.executable, "-S", str(FSYNCER)],
        input=f"{present}\n{tmp_path / 'missing'}\n{present}\n".encode(),
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert answers[0] == b"" and answers[2] == b""
    assert answers[1].startswith(b"!") and b"No such file" in answers[1]
