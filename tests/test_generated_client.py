"""The API as a platform team calls it: a client generated from `/docs/openapi.json` with
openapi-python-client creates an export, reads its state and follows its download link by the
path and parameters the document declares (a link the document cannot express would be sent
percent-encoded and refused)."""

import asyncio
import importlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from cli.demo_traffic import default_start, generate, load
from core.clickhouse import Warehouse
from tests.conftest import Running
from tests.test_dashboard_api import token
from tests.test_exports import request_body

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


def generated(document: bytes, folder: Path) -> ModuleType:
    name = f"lw_client_{uuid.uuid4().hex[:8]}"
    (folder / "openapi.json").write_bytes(document)
    done = subprocess.run(
        [
            *(GENERATOR, "generate", "--meta", "none"),
            *("--path", folder / "openapi.json", "--output-path", folder / name),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
async def demo(warehouse: Warehouse) -> Warehouse:
    await load(warehouse, generate(default_start(days=10), days=10, sessions_per_day=30, seed=8))
    return warehouse


def operation(package: ModuleType, tag: str, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.{tag}.{name}")


def path_parameters(document: dict[str, Any], url: str) -> tuple[str, dict[str, str]]:
    """The document's path template that `url` is an instance of, and its parameters."""
    path = httpx.URL(url).path
    for template in document["paths"]:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        found = re.fullmatch(pattern, path)
        if found:
            return template, found.groupdict()
    raise AssertionError(f"no path of the document matches the link {path}")


@pytest.mark.timeout(120)
async def test_a_generated_client_exports_and_follows_the_download_link(
    server: Running, demo: Warehouse, tmp_path: Path
) -> None:
    document = (await server.http.get("/docs/openapi.json")).content
    client_package = await asyncio.to_thread(generated, document, tmp_path)
    models = importlib.import_module(f"{client_package.__name__}.models")
    admin = client_package.AuthenticatedClient(base_url=server.base_url, token=token())
    anyone = client_package.Client(base_url=server.base_url)

    async with admin, anyone:  # their httpx clients closed at the end
        created = await operation(client_package, "exports", "create_export").asyncio_detailed(
            client=admin, body=models.ExportRequest.from_dict(request_body("ORDERS", "CSV"))
        )
        assert created.status_code == 202, created.content
        export_id = created.parsed.export_id
        get_export = operation(client_package, "exports", "get_export")
        for _ in range(200):
            state = (await get_export.asyncio_detailed(export_id, client=admin)).parsed
            if str(state.status) in ("READY", "FAILED"):
                break
            await asyncio.sleep(0.1)
        assert str(state.status) == "READY", state

        template, parameters = path_parameters(json.loads(document), state.download_url)
        assert template == "/v1/analytics/downloads/exports/{file}"
        assert parameters == {"file": f"{export_id}.csv"}
        query = dict(httpx.URL(state.download_url).params)
        downloaded = await operation(client_package, "exports", "download_export").asyncio_detailed(
            client=anyone, expires=query["expires"], signature=query["signature"], **parameters
        )
        assert downloaded.status_code == 200, downloaded.content
        lines = downloaded.content.decode().splitlines()
        assert lines[0].startswith('"occurred_at","order_id"')
        assert len(lines) - 1 == state.rows > 0
        forged = await operation(client_package, "exports", "download_export").asyncio_detailed(
            client=anyone, expires=query["expires"], signature="0" * 64, **parameters
        )
        assert forged.status_code == 403
