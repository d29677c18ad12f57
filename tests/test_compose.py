import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yml"


def test_compose_file_is_valid_for_docker_compose() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail(
            "docker-compose is missing: .ci/run installs it (apt-get install docker-compose)"
        )
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"],
        env={**os.environ, "AUTH_JWT_SECRET": "compose-check"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_whole_stack_with_health_checks() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"clickhouse", "redis", "rabbitmq", "minio", "api", "consumer", "worker"} <= set(
        services
    )
    for infra in ("clickhouse", "redis", "rabbitmq", "minio"):
        assert "healthcheck" in services[infra], infra
        assert services[infra]["volumes"], infra
    assert services["api"]["command"] == ["analytics", "api"]
    assert services["consumer"]["command"] == ["analytics", "consume"]
    assert services["worker"]["command"] == ["arq", "workers.WorkerSettings"]
    for role in ("api", "consumer", "worker"):
        assert services[role]["environment"]["CLICKHOUSE_URL"].startswith("http://")
