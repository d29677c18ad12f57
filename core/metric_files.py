"""prometheus-client's multiprocess mode, for `analytics api` and its worker processes.

Kept apart from `core.metrics` because it must run before that module is imported: a metric
binds its value storage (memory or a file per process) when it is defined.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # the variable prometheus-client reads at import


def share_across_processes(directory: Path) -> None:
    """Values of this process and of the workers it starts go to files in `directory`, which
    is emptied first: counters restart at zero with the processes, as Prometheus expects of a
    restart, and no dead process's gauges linger."""
    if "core.metrics" in sys.modules or "prometheus_client" in sys.modules:
        raise RuntimeError("share_across_processes must run before metrics are defined")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    # Set for prometheus-client, in this process and inherited by the workers it spawns.
    os.environ[VARIABLE] = str(directory.resolve())
