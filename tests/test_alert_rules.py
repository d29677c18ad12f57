"""The Prometheus alert rules: valid (`promtool check rules`), and each firing past its
threshold and quiet at it (`promtool test rules`, deploy/prometheus/alerts_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core import metrics

pytestmark = pytest.mark.integration  # runs a Debian tool (scripts/test installs it)

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: scripts/test installs Debian's prometheus"
    return subprocess.run(
        [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout


def test_rules_fire_past_each_threshold_and_not_at_it() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_name_the_metrics_the_service_exposes() -> None:
    exposed = metrics.exposition().decode()
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    for name in (
        "tracking_ingest_rate_per_second",
        "aggregation_job_duration_ms",
        "dashboard_snapshot_age_minutes",
        "dashboard_snapshot_never_rebuilt",
        "archive_days_behind",
        "export_generation_duration_ms",
        "analytics_event_drop_rate",
        "redis_eviction_allowed",
        "redis_evicted_keys",
        "redis_memory_used_ratio",
    ):
        assert f"# TYPE {name} " in exposed, name
        assert any(name in rule["expr"] for rule in rules), name
    # The histograms' thresholds are bucket bounds, so "slower than" is exact.
    assert 60000 in metrics.AGGREGATION_JOB_DURATION._upper_bounds
    assert 30000 in metrics.EXPORT_DURATION._upper_bounds
