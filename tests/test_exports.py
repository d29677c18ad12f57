"""Report exports: validation, the job streaming into file storage and into S3 (moto's server
over HTTP), signed download links, the published event, paging, and clean-up."""

import asyncio
import csv
import decimal
import io
import json
import os
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import boto3
import httpx
import msgspec
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import REGISTRY

from cli.demo_traffic import default_start, generate, load
from core import clickhouse
from core.clickhouse import Warehouse
from core.settings import Settings
from materialized import reports
from tests.conftest import Running, event, free_port, job_of
from tests.test_dashboard_api import ADMIN_ID, bearer, token
from workers import jobs

EXPORTS = "/v1/analytics/exports"
ORDERS_SQL = "SELECT count() FROM analytics_events WHERE event_type = 'order-created'"
TOTAL_SQL = "SELECT sum(amount) FROM analytics_events WHERE event_type = 'order-created'"


def request_body(report: str = "ORDERS", fmt: str = "CSV", days: int = 12) -> dict[str, Any]:
    end = datetime.now(UTC) + timedelta(days=2)  # the generated traffic runs to midnight
    return {
        "reportType": report,
        "format": fmt,
        "dateRange": {"from": (end - timedelta(days=days)).isoformat(), "to": end.isoformat()},
    }


@pytest.fixture
async def demo(warehouse: Warehouse) -> Warehouse:
    await load(warehouse, generate(default_start(days=10), days=10, sessions_per_day=60, seed=5))
    return warehouse


async def finished(server: Running, export_id: str) -> dict[str, Any]:
    for _ in range(200):
        answer = await server.http.get(f"{EXPORTS}/{export_id}", headers=bearer(token()))
        body: dict[str, Any] = answer.json()
        if body["status"] in ("READY", "FAILED"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError("export did not finish")


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        ({**request_body(), "reportType": "SALES"}, "$.reportType", "Invalid enum value"),
        ({**request_body(), "format": "XLSX"}, "$.format", "Invalid enum value"),
        ({"reportType": "ORDERS", "format": "CSV"}, "$", "dateRange"),
        (
            {**request_body(), "dateRange": {"from": "yesterday", "to": "2026-01-01"}},
            "$.dateRange.from",
            "datetime",
        ),
        (
            {
                **request_body(),
                "dateRange": {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            },
            "$.dateRange.to",
            "after",
        ),
        ({**request_body(), "colour": "red"}, "$", "unknown field `colour`"),
        (
            {
                **request_body(),
                "dateRange": {"from": "0001-01-01T00:30:00+01:00", "to": "2026-01-01T00:00:00Z"},
            },
            "$.dateRange",
            "out of range",
        ),
    ],
)
async def test_bad_export_requests_are_400_naming_the_field(
    server: Running, body: dict[str, Any], path: str, says: str
) -> None:
    answer = await server.http.post(EXPORTS, json=body, headers=bearer(token()))
    assert answer.status_code == 400
    assert answer.json()["path"] == path
    assert says in answer.json()["error"]


async def test_exports_need_an_admin(server: Running) -> None:
    assert (await server.http.post(EXPORTS, json=request_body())).status_code == 401
    other = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token("USER")))
    assert other.status_code == 403
    assert (await server.http.get(f"{EXPORTS}/x")).status_code == 401


@pytest.mark.parametrize("sub", ["admin@lomashwood.co.uk", "analytics-cli", None])
async def test_an_export_needs_a_token_naming_the_admin_by_user_id(
    server: Running, sub: str | None
) -> None:
    refused = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token(sub=sub)))
    assert refused.status_code == 403
    assert refused.json()["path"] == "sub" and "uuid" in refused.json()["error"]


async def test_unknown_export_is_404(server: Running) -> None:
    for export_id in ("0190f0f0-0000-7000-8000-000000000000", "not-an-id"):
        answer = await server.http.get(f"{EXPORTS}/{export_id}", headers=bearer(token()))
        assert answer.status_code == 404


@pytest.fixture
async def generated(
    listen: Callable[..., Awaitable[aio_pika.abc.AbstractQueue]],
) -> aio_pika.abc.AbstractQueue:
    return await listen("lomash.analytics.report.generated")


async def test_csv_export_lands_in_file_storage_behind_a_signed_link(
    server: Running, demo: Warehouse, generated: aio_pika.abc.AbstractQueue
) -> None:
    await server.services.runtime.publisher.connected.wait()
    # Metrics are process-wide: compare before and after.
    exports_before = REGISTRY.get_sample_value("export_generation_duration_ms_count") or 0.0
    created = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token()))
    assert created.status_code == 202
    export_id = created.json()["exportId"]
    state = await finished(server, export_id)
    assert state["status"] == "READY", state
    orders = await demo.scalar(ORDERS_SQL)
    assert state["rows"] == orders > 0
    expires = datetime.fromisoformat(state["expiresAt"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    download = await server.http.get(state["downloadUrl"])
    assert download.status_code == 200
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0] == ["occurred_at", "order_id", "customer_id", "amount", "currency", "quantity"]
    assert len(table) - 1 == orders
    total = await demo.scalar(TOTAL_SQL)
    assert sum(decimal.Decimal(row[3]) for row in table[1:]) == total
    # The link is the authorisation: altered or expired, it is refused.
    tampered = state["downloadUrl"].replace("signature=", "signature=0")
    assert (await server.http.get(tampered)).status_code == 403
    storage = server.services.runtime.storage
    key = f"exports/{export_id}.csv"
    old = storage.download_url(key, datetime.now(UTC) - timedelta(seconds=1))
    assert (await server.http.get(old)).status_code == 403
    message = await generated.get(timeout=10)
    body = msgspec.json.decode(message.body)
    assert body["eventType"] == "report-generated"
    payload = body["payload"]
    assert payload["exportId"] == export_id
    assert payload["requestedBy"] == ADMIN_ID
    assert payload["downloadUrl"].startswith(server.base_url)
    assert payload["rows"] == orders
    assert "export_generation_duration_ms_count" in (await server.http.get("/metrics")).text
    exports_after = REGISTRY.get_sample_value("export_generation_duration_ms_count")
    assert exports_after == exports_before + 1


@pytest.mark.parametrize("fmt", ["JSON", "NDJSON", "CSV"])
@pytest.mark.parametrize("report", ["BOOKINGS", "REVENUE", "PRODUCTS", "FUNNELS"])
async def test_each_report_in_each_format(
    server: Running, demo: Warehouse, report: str, fmt: str
) -> None:
    created = await server.http.post(
        EXPORTS, json=request_body(report, fmt), headers=bearer(token())
    )
    state = await finished(server, created.json()["exportId"])
    assert state["status"] == "READY", state
    download = await server.http.get(state["downloadUrl"])
    text = download.text
    if fmt == "JSON":  # one document: what JSON.parse and json.loads take
        assert download.headers["content-type"].startswith("application/json")
        rows = json.loads(text)
        assert isinstance(rows, list)
    elif fmt == "NDJSON":
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == state["rows"] > 0
    expected = {
        "BOOKINGS": {
            "occurred_at",
            "event_type",
            "booking_id",
            "customer_id",
            "showroom_id",
            "appointment_type",
            "scheduled_at",
        },
        "REVENUE": {
            "day",
            "currency",
            "orders",
            "order_value",
            "payments",
            "revenue",
            "average_order_value",
        },
        "PRODUCTS": {"product_id", "views"},
        "FUNNELS": {"funnel", "step_number", "step", "visitors", "conversion_rate"},
    }[report]
    assert set(rows[0]) == expected


@pytest.mark.parametrize("fmt", ["CSV", "JSON", "NDJSON"])
async def test_large_reports_stream_in_pieces_cut_anywhere_with_one_header(
    server: Running, demo: Warehouse, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # Pieces of 7 bytes cut records, objects and the record starts the count looks for.
    monkeypatch.setattr(clickhouse, "STREAM_CHUNK_BYTES", 7)
    pieces: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        pieces.append(chunk)

    now = datetime.now(UTC) + timedelta(days=2)
    rows = await reports.write_report(
        demo, "ORDERS", fmt, now - timedelta(days=12), now, zoneinfo.ZoneInfo("UTC"), collect
    )
    orders = await demo.scalar(ORDERS_SQL)
    text = b"".join(pieces).decode()
    assert len(pieces) > orders > 2
    assert rows == orders
    if fmt == "CSV":
        assert text.count("occurred_at") == 1
        assert len(list(csv.DictReader(io.StringIO(text, newline="")))) == orders
    elif fmt == "JSON":
        assert len(msgspec.json.decode(text)) == orders
    else:
        assert len([msgspec.json.decode(line) for line in text.splitlines()]) == orders


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "eu-west-2",
    }.items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(
        Bucket="lomash-reports", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
    )
    yield endpoint
    httpx.post(f"{endpoint}/moto-api/reset")  # moto keeps buckets per process, not per server
    moto.stop()


async def test_export_to_s3_with_a_presigned_link(
    make_server,
    settings: Settings,
    demo: Warehouse,
    s3: str,  # type: ignore[no-untyped-def]
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(
            settings, storage_url="s3://lomash-reports/analytics", s3_endpoint_url=s3
        )
    )
    created = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token()))
    state = await finished(server, created.json()["exportId"])
    assert state["status"] == "READY", state
    assert state["downloadUrl"].startswith(s3)
    query = dict(httpx.URL(state["downloadUrl"]).params)
    assert query["X-Amz-Signature"]
    assert 7 * 86400 - 120 < int(query["X-Amz-Expires"]) <= 7 * 86400  # valid seven days
    async with httpx.AsyncClient() as http:
        download = await http.get(state["downloadUrl"])
    assert download.status_code == 200
    assert len(download.text.splitlines()) - 1 == state["rows"]
    listed = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="lomash-reports")
    assert [o["Key"] for o in listed["Contents"]] == [
        f"analytics/exports/{created.json()['exportId']}.csv"
    ]


async def test_old_export_files_are_removed(server: Running, warehouse: Warehouse) -> None:
    storage = server.services.runtime.storage
    for name, age_days in (("old", 8), ("new", 1)):
        writer = await storage.writer(f"exports/{name}.csv")
        await writer.write(b"a\n")
        await writer.close()
        stamp = time.time() - age_days * 86400
        os.utime(storage.path(f"exports/{name}.csv"), (stamp, stamp))  # type: ignore[attr-defined]
    ctx = {"job": job_of(server, warehouse)}
    assert await jobs.remove_old_exports(ctx) == "removed 1 export files"
    assert not await storage.exists("exports/old.csv")
    assert await storage.exists("exports/new.csv")


async def test_export_to_a_missing_bucket_ends_failed_with_the_reason(
    make_server,
    settings: Settings,
    demo: Warehouse,
    s3: str,  # type: ignore[no-untyped-def]
) -> None:
    server: Running = await make_server(
        msgspec.structs.replace(settings, storage_url="s3://no-such-bucket/x", s3_endpoint_url=s3)
    )
    created = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token()))
    state = await finished(server, created.json()["exportId"])
    assert state["status"] == "FAILED", state
    assert "NoSuchBucket" in state["error"]


async def test_s3_create_bucket_makes_a_missing_bucket_at_start(
    make_server,
    settings: Settings,
    demo: Warehouse,
    s3: str,  # type: ignore[no-untyped-def]
) -> None:
    client = boto3.client("s3", endpoint_url=s3)
    assert "fresh-minio" not in {b["Name"] for b in client.list_buckets()["Buckets"]}
    server: Running = await make_server(
        msgspec.structs.replace(
            settings, storage_url="s3://fresh-minio/lw", s3_endpoint_url=s3, s3_create_bucket=True
        )
    )
    assert "fresh-minio" in {b["Name"] for b in client.list_buckets()["Buckets"]}
    storage = server.services.runtime.storage
    assert await storage.ensure_bucket() is False  # type: ignore[attr-defined]  # already there
    created = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token()))
    assert (await finished(server, created.json()["exportId"]))["status"] == "READY"


async def test_s3_create_bucket_that_cannot_be_made_stops_the_start(
    settings: Settings, s3: str
) -> None:
    from core.storage import StorageError, prepare_storage, storage_for

    unreachable = f"http://127.0.0.1:{free_port()}"
    bad = msgspec.structs.replace(
        settings, storage_url="s3://b/x", s3_endpoint_url=unreachable, s3_create_bucket=True
    )
    with pytest.raises(StorageError, match="S3_CREATE_BUCKET: cannot create bucket"):
        await prepare_storage(bad, storage_for(bad))


FORMULAS = ['=HYPERLINK("http://evil.test","x")', "+1+1", "-2+3", "@SUM(A1)", "\tindent", "\rback"]


async def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_json_is_unchanged(
    server: Running, warehouse: Warehouse
) -> None:
    products = [*FORMULAS, "kit-shaker-oak", "-"]
    beacons = [
        {**event(eventType="PRODUCT_VIEW"), "properties": {"productId": product}}
        for product in products
    ]
    assert (await server.http.post("/v1/analytics/track", json=beacons)).status_code == 202
    await server.drain()
    start = datetime.now(UTC) - timedelta(days=1)
    end = datetime.now(UTC) + timedelta(days=1)

    async def export(fmt: reports.Format) -> str:
        chunks: list[bytes] = []

        async def write(data: bytes) -> None:
            chunks.append(data)

        zone = zoneinfo.ZoneInfo("Europe/London")
        await reports.write_report(warehouse, "PRODUCTS", fmt, start, end, zone, write)
        return b"".join(chunks).decode()

    cells = {
        row["product_id"]: row["views"]
        for row in csv.DictReader(io.StringIO(await export("CSV"), newline=""))
    }
    assert set(cells) == {"'" + f for f in FORMULAS} | {"kit-shaker-oak", "'-"}
    assert set(cells.values()) == {"1"}  # numbers stay numbers
    unchanged = {row["product_id"]: row["views"] for row in json.loads(await export("JSON"))}
    assert unchanged == dict.fromkeys(products, 1)
    assert reports.neutralised("=1") == "'=1" and reports.neutralised(-2) == -2
