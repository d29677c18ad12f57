"""The compose files: valid for docker-compose, and what a fresh host needs from them (no Docker
engine runs here, so they are checked, not started)."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration  # runs a Debian tool (scripts/test installs it)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yml"
CLUSTER = ROOT / "deploy" / "compose.cluster.yml"

# What each image ships for its health check to call. MinIO's images dropped curl in 2023 and
# carry `mc`; python:3.11-slim (ours) has no curl or wget; ClickHouse's has its own client.
IMAGE_COMMANDS = {
    "clickhouse/clickhouse-server": {"clickhouse", "clickhouse-client"},
    "redis": {"redis-cli"},
    "rabbitmq": {"rabbitmq-diagnostics"},
    "quay.io/minio/minio": {"mc"},
    "build": {"python", "analytics"},  # our image
}


# The cluster file is an override of compose.yml: the two are checked merged.
STACKS = {"compose": [COMPOSE], "cluster": [COMPOSE, CLUSTER]}


def load(path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    return spec


def compose_config(files: list[Path]) -> dict[str, Any]:
    """The stack as docker-compose itself reads it (anchors, merges and overrides applied)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail(
            "docker-compose is missing: .ci/run installs it (apt-get install docker-compose)"
        )
    result = subprocess.run(
        [tool, *(arg for f in files for arg in ("-f", str(f))), "config"],
        env={**os.environ, "AUTH_JWT_SECRET": "compose-check", "CLUSTER_SECRET": "check"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    spec: dict[str, Any] = yaml.safe_load(result.stdout)
    return spec


@pytest.mark.parametrize("stack", STACKS)
def test_compose_file_is_valid_for_docker_compose(stack: str) -> None:
    assert compose_config(STACKS[stack])["services"]


def test_compose_runs_the_whole_stack_with_health_checks() -> None:
    services = load(COMPOSE)["services"]
    assert {"clickhouse", "redis", "rabbitmq", "minio", "api", "consumer", "worker"} <= set(
        services
    )
    for infra in ("clickhouse", "redis", "rabbitmq", "minio"):
        assert "healthcheck" in services[infra], infra
        assert services[infra]["volumes"], infra
    assert "healthcheck" in services["cache"]
    assert services["api"]["command"] == ["analytics", "api"]
    assert services["consumer"]["command"] == ["analytics", "consume"]
    assert services["worker"]["command"] == ["arq", "workers.WorkerSettings"]
    for role in ("api", "consumer", "worker"):
        env = services[role]["environment"]
        assert env["CLICKHOUSE_URL"].startswith("http://")
        assert env["S3_CREATE_BUCKET"] == "true"  # a fresh MinIO has no bucket
        # The only writable place, on a volume of its own: the tracking log outlives the container.
        assert [v.split(":")[1] for v in services[role]["volumes"]] == [env["DATA_DIR"]]
        assert "healthcheck" in services[role], role
    assert services["consumer"]["environment"]["METRICS_PORT"]
    assert services["worker"]["environment"]["METRICS_PORT"]
    # The relay reads the api's outboxes: the api's volume.
    assert services["relay"]["command"] == ["analytics", "relay"]
    assert services["relay"]["volumes"] == services["api"]["volumes"]


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_pinned_and_health_checks_call_what_they_contain(stack: str) -> None:
    for name, service in compose_config(STACKS[stack])["services"].items():
        image = "build" if "build" in service else service["image"]
        if image != "build":
            repository, _, tag = image.rpartition(":")
            assert tag and tag != "latest", f"{name}: pin {image}"
            assert not repository.startswith(("minio/", "docker.io/minio/")), (
                f"{name}: Docker Hub no longer serves MinIO; use quay.io/minio/minio"
            )
        else:
            repository = "build"
        check = service.get("healthcheck")
        if check is None:
            continue
        test = check["test"]
        command = test[1].split()[0] if test[0] == "CMD-SHELL" else test[1]
        assert command in IMAGE_COMMANDS[repository], f"{name}: {repository} has no {command}"


def options_of(service: dict[str, Any]) -> dict[str, str]:
    command = service["command"]
    return dict(zip(command[1::2], command[2::2], strict=True))


def test_durable_redis_never_evicts_and_client_state_has_its_own() -> None:
    services = load(COMPOSE)["services"]
    durable = options_of(services["redis"])
    assert durable["--appendonly"] == "yes"
    assert durable["--maxmemory-policy"] == "noeviction"  # a lost key is lost work
    cache = options_of(services["cache"])
    assert cache["--maxmemory-policy"] == "allkeys-lru"
    assert cache["--maxmemory"]
    for role in ("api", "consumer", "worker", "relay"):
        env = services[role]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", role
        assert env["CACHE_REDIS_URL"] == "redis://cache:6379/0", role


def test_image_runs_as_a_non_root_user_writing_only_data_dir() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "DATA_DIR=/var/lib/analytics" in dockerfile
    assert 'VOLUME ["/var/lib/analytics"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)


def test_cluster_stack_has_two_shards_of_two_replicas_and_a_keeper_quorum() -> None:
    services = compose_config(STACKS["cluster"])["services"]
    nodes = {
        name: (s["environment"]["SHARD"], s["environment"]["REPLICA"])
        for name, s in services.items()
        if "SHARD" in s.get("environment", {})
    }
    assert sorted(shard for shard, _ in nodes.values()) == ["01", "01", "02", "02"]
    assert all(replica == name for name, (_, replica) in nodes.items())  # hosts in cluster.xml
    keepers = [name for name in services if name.startswith("keeper-")]
    assert len(keepers) == 3
    for name in nodes:
        assert set(services[name]["depends_on"]) >= set(keepers)
    remote = (ROOT / "deploy" / "clickhouse" / "cluster.xml").read_text()
    for name in nodes:
        assert f"<host>{name}</host>" in remote
    for role in ("migrate", "api", "consumer", "worker"):
        assert services[role]["environment"]["CLICKHOUSE_CLUSTER"] == "analytics"
