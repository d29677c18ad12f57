"""Exports as analysts load them: every report in CSV and JSON read by DuckDB and pandas, with
the types docs/reports.md states (amounts exact decimals, timestamps ISO 8601 with their offset
in REPORT_TIMEZONE, NULL an empty CSV field), equal to the events that were published."""

import csv
import decimal
import io
import uuid
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pandas as pd
import pytest

from cli.demo_traffic import generate
from consumers.mapping import DomainRow, to_row
from core import clickhouse
from core.clickhouse import Warehouse
from materialized import reports
from tests.domain_events import booking_cancelled, booking_created, order_created, payment_succeeded
from tracked.row import TrackingRow

LONDON = zoneinfo.ZoneInfo("Europe/London")
START, END = datetime(2026, 10, 9, tzinfo=UTC), datetime(2026, 10, 27, tzinfo=UTC)
D = decimal.Decimal
# docs/reports.md: the type of every column, as a reader should declare it.
AMOUNT = "DECIMAL(38,6)"
DECLARED = {
    "ORDERS": {"amount": AMOUNT},
    "REVENUE": {"order_value": AMOUNT, "revenue": AMOUNT, "average_order_value": AMOUNT},
    "BOOKINGS": {},
    "PRODUCTS": {},
    "FUNNELS": {},
}
DETECTED = {  # what DuckDB finds by itself once the amounts are declared
    "ORDERS": {
        "occurred_at": "TIMESTAMP WITH TIME ZONE",
        "amount": "DECIMAL(38,6)",
        "currency": "VARCHAR",
        "quantity": "BIGINT",
    },
    "BOOKINGS": {
        "occurred_at": "TIMESTAMP WITH TIME ZONE",
        "event_type": "VARCHAR",
        "appointment_type": "VARCHAR",
        "scheduled_at": "TIMESTAMP WITH TIME ZONE",
    },
    "REVENUE": {
        "day": "DATE",
        "currency": "VARCHAR",
        "orders": "BIGINT",
        "order_value": "DECIMAL(38,6)",
        "payments": "BIGINT",
        "revenue": "DECIMAL(38,6)",
        "average_order_value": "DECIMAL(38,6)",
    },
    "PRODUCTS": {"product_id": "VARCHAR", "views": "BIGINT"},
    "FUNNELS": {
        "funnel": "VARCHAR",
        "step_number": "BIGINT",
        "step": "VARCHAR",
        "visitors": "BIGINT",
        "conversion_rate": "DOUBLE",
    },
}

# Orders as publishers send them: a JSON number, a string past a double's 15 digits, a Node
# float sum, and two at the same London wall-clock time either side of the October clock change.
ORDERS = [
    ("2026-10-10T12:00:00+01:00", 1249.5, "2026-10-10T12:00:00.000+01:00", D("1249.50")),
    (
        "2026-10-25T00:30:00Z",
        "197530864219753086.42",
        "2026-10-25T01:30:00.000+01:00",
        D("197530864219753086.42"),
    ),
    ("2026-10-25T01:30:00Z", 129.99 + 49.99, "2026-10-25T01:30:00.000+00:00", D("179.98")),
]


async def publish(warehouse: Warehouse, messages: list[tuple[str, dict[str, Any]]]) -> None:
    rows = [to_row(key, msgspec.json.encode(body), datetime.now(UTC)) for key, body in messages]
    lines = msgspec.json.Encoder().encode_lines(rows)
    await warehouse.insert_lines(
        "analytics_events", DomainRow.__struct_fields__, lines, dedup_token=uuid.uuid4().hex
    )


@pytest.fixture
async def published(warehouse: Warehouse) -> dict[str, Any]:
    orders = [order_created(total=total) | {"timestamp": at} for at, total, _, _ in ORDERS]
    payment = payment_succeeded(1249.5) | {"timestamp": "2026-10-10T12:05:00+01:00"}
    created = booking_created() | {"timestamp": "2026-10-10T12:00:00+01:00"}
    cancelled = booking_cancelled() | {"timestamp": "2026-10-11T12:00:00+01:00"}
    await publish(
        warehouse,
        [("lomash.orders.created", o) for o in orders]
        + [
            ("lomash.payments.succeeded", payment),
            ("lomash.bookings.created", created),
            ("lomash.bookings.cancelled", cancelled),
        ],
    )
    traffic = generate(START, days=3, sessions_per_day=40, seed=31)
    await warehouse.insert_lines(
        "tracking_events",
        TrackingRow.__struct_fields__,
        msgspec.json.Encoder().encode_lines(traffic.tracking),
        dedup_token=uuid.uuid4().hex,
    )
    return {"orders": orders, "created": created, "cancelled": cancelled}


async def exported(warehouse: Warehouse, report: str, fmt: str, folder: Path) -> Path:
    out = io.BytesIO()

    async def write(data: bytes) -> None:
        out.write(data)

    await reports.write_report(warehouse, report, fmt, START, END, LONDON, write)  # type: ignore[arg-type]
    path = folder / f"{report.lower()}.{fmt.lower()}"
    path.write_bytes(out.getvalue())
    return path


def duckdb_read(path: Path, report: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    declared = DECLARED[report]
    if path.suffix == ".csv":
        relation = duckdb.read_csv(str(path), dtype=declared or None)
    else:
        relation = duckdb.sql(
            f"SELECT * REPLACE ({', '.join(f'{c}::{t} AS {c}' for c, t in declared.items())})"
            f" FROM read_json('{path}')"
            if declared
            else f"SELECT * FROM read_json('{path}')"
        )
    types = dict(zip(relation.columns, map(str, relation.dtypes), strict=True))
    rows = [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]
    return types, rows


def pandas_read(path: Path, report: str) -> pd.DataFrame:
    exact = {column: str for column in DECLARED[report]}
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=exact)
    else:
        frame = pd.read_json(path, dtype=exact or True)
    for column in exact:
        frame[column] = frame[column].map(lambda v: None if pd.isna(v) else D(v))
    return frame


@pytest.mark.parametrize("fmt", ["CSV", "JSON"])
@pytest.mark.parametrize("report", ["ORDERS", "BOOKINGS", "REVENUE", "PRODUCTS", "FUNNELS"])
async def test_duckdb_reads_every_report_with_its_documented_types(
    warehouse: Warehouse, published: dict[str, Any], tmp_path: Path, report: str, fmt: str
) -> None:
    types, rows = duckdb_read(await exported(warehouse, report, fmt, tmp_path), report)
    for column, expected in DETECTED[report].items():
        assert types[column] == expected, (column, types)
    assert rows, report
    if report == "ORDERS":
        assert [(r["amount"], r["occurred_at"]) for r in rows] == [
            (amount, datetime.fromisoformat(local)) for _, _, local, amount in ORDERS
        ]
        assert [r["order_id"] for r in rows] == [
            str(o["payload"]["orderId"]) if fmt == "CSV" else uuid.UUID(o["payload"]["orderId"])
            for o in published["orders"]
        ]
    elif report == "BOOKINGS":
        created, cancelled = rows
        assert created["scheduled_at"] == datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
        assert created["appointment_type"] == "KITCHEN_DESIGN"
        assert cancelled["event_type"] == "booking-cancelled"
        assert cancelled["scheduled_at"] is None
        assert cancelled["showroom_id"] is None and cancelled["appointment_type"] is None
    elif report == "REVENUE":
        october_10, october_25 = rows
        assert october_10["day"].isoformat() == "2026-10-10"
        assert (october_10["order_value"], october_10["revenue"]) == (D("1249.5"), D("1249.5"))
        assert october_10["average_order_value"] == D("1249.5")
        assert october_25["orders"] == 2
        assert october_25["order_value"] == D("197530864219753086.42") + D("179.98")
        assert october_25["payments"] == 0 and october_25["revenue"] == 0
    elif report == "PRODUCTS":
        views = await warehouse.rows(
            "SELECT product_id, sum(views) AS v FROM product_views_hourly"
            " GROUP BY product_id ORDER BY v DESC, product_id"
        )
        assert [(r["product_id"], r["views"]) for r in rows] == [(p, int(v)) for p, v in views]
    else:
        assert {r["funnel"] for r in rows} == {"booking", "checkout"}
        assert all(0 <= r["conversion_rate"] <= 100 for r in rows)


@pytest.mark.parametrize("fmt", ["CSV", "JSON"])
async def test_pandas_reads_exact_amounts_zoned_times_and_missing_values(
    warehouse: Warehouse, published: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    orders = pandas_read(await exported(warehouse, "ORDERS", fmt, tmp_path), "ORDERS")
    assert list(orders["amount"]) == [amount for *_, amount in ORDERS]
    times = pd.to_datetime(orders["occurred_at"], format="ISO8601", utc=True)
    assert [t.to_pydatetime() for t in times] == [
        datetime.fromisoformat(at.replace("Z", "+00:00")) for at, *_ in ORDERS
    ]
    assert list(orders["occurred_at"]) == [local for _, _, local, _ in ORDERS]
    assert orders["quantity"].dtype == "int64"

    bookings = pandas_read(await exported(warehouse, "BOOKINGS", fmt, tmp_path), "BOOKINGS")
    cancelled = bookings[bookings["event_type"] == "booking-cancelled"].iloc[0]
    assert pd.isna(cancelled["scheduled_at"]) and pd.isna(cancelled["appointment_type"])
    assert pd.isna(cancelled["showroom_id"])  # empty in CSV, null in JSON: never "\\N"

    revenue = pandas_read(await exported(warehouse, "REVENUE", fmt, tmp_path), "REVENUE")
    assert list(revenue["order_value"]) == [D("1249.50"), D("197530864219753266.40")]
    assert list(revenue["orders"]) == [1, 2]


async def test_csv_writes_amounts_at_two_places_or_more_and_null_as_an_empty_field(
    warehouse: Warehouse, published: dict[str, Any], tmp_path: Path
) -> None:
    orders = (await exported(warehouse, "ORDERS", "CSV", tmp_path)).read_text()
    assert '"1249.50"' in orders and '"197530864219753086.42"' in orders
    assert '"179.98"' in orders  # 179.98000000000002 was rounded to the column, exactly
    bookings = (await exported(warehouse, "BOOKINGS", "CSV", tmp_path)).read_text()
    assert "\\N" not in bookings
    assert bookings.splitlines()[-1].endswith(",,,")  # showroom, appointment type, scheduled
    revenue = (await exported(warehouse, "REVENUE", "JSON", tmp_path)).read_bytes()
    assert b'"average_order_value":"1249.50"' in revenue and b'"orders":1' in revenue


# Appointment types a publisher may send (any text up to 64 characters) that look, to a
# careless counter, like more or fewer CSV records: newlines, quotes, a newline then a digit.
AWKWARD = ['a\n"1\n2', "\n", '"', '"\n"2026-10-10', "1\n", "=1+2", "", "plain"]


@pytest.mark.parametrize("fmt", ["CSV", "JSON", "NDJSON"])
async def test_rows_are_counted_exactly_whatever_the_values_hold(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # Pieces of 5 bytes cut records, objects and the record starts the count looks for.
    monkeypatch.setattr(clickhouse, "STREAM_CHUNK_BYTES", 5)
    bookings = []
    for hour, kind in enumerate(AWKWARD):
        body = booking_created() | {"timestamp": f"2026-10-10T{hour:02d}:30:00Z"}
        body["payload"]["appointmentType"] = kind or "x"
        bookings.append(("lomash.bookings.created", body))
    await publish(warehouse, bookings)
    out = io.BytesIO()

    async def write(data: bytes) -> None:
        out.write(data)

    rows = await reports.write_report(warehouse, "BOOKINGS", fmt, START, END, LONDON, write)  # type: ignore[arg-type]
    text = out.getvalue().decode()
    if fmt == "CSV":
        found = [r["appointment_type"] for r in csv.DictReader(io.StringIO(text, newline=""))]
    elif fmt == "JSON":
        found = [r["appointment_type"] for r in msgspec.json.decode(text)]
    else:
        found = [msgspec.json.decode(line)["appointment_type"] for line in text.splitlines()]
    expected = [reports.neutralised(k or "x") if fmt == "CSV" else (k or "x") for k in AWKWARD]
    assert rows == len(AWKWARD) == len(found)
    assert found == expected
