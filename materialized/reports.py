"""Report exports: each report's rows, formatted by ClickHouse, written in pages.

Formats: `CSV` (a header row, RFC 4180 quoting), `JSON` (one JSON document: an array of row
objects, streamed page by page), `NDJSON` (one object per line).

Row-level reports are cut into pages of at most PAGE_ROWS rows along UTC hours (counted from
the rollups first), so memory stays the size of a page whatever the report's size. Columns:

BOOKINGS  occurred_at, event_type (booking-created | booking-cancelled), booking_id,
          customer_id, showroom_id, appointment_type, scheduled_at
ORDERS    occurred_at, order_id, customer_id, amount, currency, quantity
REVENUE   day (REPORT_TIMEZONE), currency, orders, order_value, payments, revenue,
          average_order_value
PRODUCTS  product_id, views (PRODUCT_VIEW, bots excluded)
FUNNELS   funnel, step_number, step, visitors, conversion_rate (windowFunnel, see funnels.py)

CSV cells of free-text columns (those whose values come from beacons or publishers) that begin
with `=`, `+`, `-`, `@`, a tab or a carriage return get a leading `'`, as OWASP recommends, so
that a spreadsheet shows them instead of running them; numeric columns are left as they are.
JSON and NDJSON carry every value unchanged.

Every format writes the same values (docs/reports.md lists the types): timestamps ISO 8601 in
REPORT_TIMEZONE with their offset, amounts exact decimal text with at least two places, NULL
an empty CSV field or JSON null.
"""

from __future__ import annotations

import csv
import io
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

import msgspec

from core.clickhouse import Warehouse
from core.settings import PRODUCT_PAGE_PATTERN
from materialized import funnels

ReportType = Literal["BOOKINGS", "ORDERS", "REVENUE", "PRODUCTS", "FUNNELS"]
Format = Literal["CSV", "JSON", "NDJSON"]
EXTENSIONS: dict[str, str] = {"CSV": "csv", "JSON": "json", "NDJSON": "ndjson"}
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}
PAGE_ROWS = 25_000

# Per report, the columns whose text a client or a publisher chose (ids are UUIDs, amounts
# and counts numbers, days and times dates: none of those can start a formula).
_FREE_TEXT = {
    "BOOKINGS": ("event_type", "appointment_type"),
    "ORDERS": ("currency",),
    "REVENUE": ("currency",),
    "PRODUCTS": ("product_id",),
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The same first characters as ClickHouse string literals ('\t' and '\r' are its escapes).
_FORMULA_STARTS_SQL = "'=', '+', '-', '@', '\\t', '\\r'"


def _cell(column: str) -> str:
    text = f"toString({column})"
    return (
        f"if(substring({text}, 1, 1) IN ({_FORMULA_STARTS_SQL}),"
        f" concat('\\'', {text}), {text}) AS {column}"
    )


def _for_format(report: str, select: str, fmt: Format) -> str:
    """`select`, with its free-text columns neutralised when the format is CSV."""
    if fmt != "CSV":
        return select
    replaced = ", ".join(_cell(column) for column in _FREE_TEXT[report])
    return f"SELECT * REPLACE ({replaced}) FROM ({select})"


def neutralised(value: object) -> object:
    """A CSV cell written by Python: text that a spreadsheet would run gets a leading `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _local_time(column: str) -> str:
    """ISO 8601 in REPORT_TIMEZONE with its offset, to the millisecond:
    `2026-10-10T12:00:00.000+01:00` (NULL stays NULL)."""
    local = f"formatDateTime({column}, '%Y-%m-%dT%H:%i:%S.%f', {{zone:String}})"
    offset = f"formatDateTime({column}, '%z', {{zone:String}})"
    return (
        f"concat(substring({local}, 1, 23), substring({offset}, 1, 3), ':',"
        f" substring({offset}, 4, 2)) AS {column}"
    )


def _money(value: str, name: str | None = None) -> str:
    """The exact decimal as text, with at least two places (`1249.50`, `12.00`) and more
    only where the amount has them (up to the column's six): never rounded, never a float."""
    text = f"toString({value})"
    point = f"position({text}, '.')"
    return (
        f"multiIf(isNull({value}), NULL, {point} = 0, concat({text}, '.00'),"
        f" length({text}) - {point} = 1, concat({text}, '0'), {text}) AS {name or value}"
    )


_ROW_REPORTS = {
    "BOOKINGS": (
        ("booking-created", "booking-cancelled"),
        f"SELECT {_local_time('occurred_at')}, event_type, booking_id, customer_id, showroom_id,"
        # A cancellation names no appointment type: NULL, not an empty string.
        " nullIf(appointment_type, '') AS appointment_type,"
        f" {_local_time('scheduled_at')} FROM analytics_events FINAL"
        " WHERE event_type IN ('booking-created', 'booking-cancelled')",
    ),
    "ORDERS": (
        ("order-created",),
        f"SELECT {_local_time('occurred_at')}, order_id, customer_id, {_money('amount')},"
        " currency, quantity FROM analytics_events FINAL WHERE event_type = 'order-created'",
    ),
}
# NULL is an empty field in CSV (RFC 4180 has no NULL; DuckDB and pandas read it as missing);
# counts are JSON numbers (none comes near 2^53), amounts JSON strings.
_SETTINGS = (
    " SETTINGS format_csv_null_representation = '', output_format_json_quote_64bit_integers = 0"
)
# The row reports' aliases reuse the column names: WHERE and ORDER BY must mean the columns.
_ROW_SETTINGS = _SETTINGS + ", prefer_column_name_to_alias = 1"
_PAGE = (
    " AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}"
    " ORDER BY occurred_at, event_id"
)
_ORDER_VALUE = "sumIf(amount, event_type = 'order-created')"
_REVENUE_SUM = "sumIf(amount, event_type = 'payment-succeeded')"
_PAYMENTS = "sumIf(events, event_type = 'payment-succeeded')"
# The spec: average order value is revenue / successful payments.
_AVERAGE = f"if({_PAYMENTS} = 0, toDecimal128(0, 2), toDecimal128({_REVENUE_SUM} / {_PAYMENTS}, 2))"
_REVENUE = (
    "SELECT toDate(hour, {zone:String}) AS day, currency,"
    " sumIf(events, event_type = 'order-created') AS orders,"
    f" {_money(_ORDER_VALUE, 'order_value')}, {_PAYMENTS} AS payments,"
    f" {_money(_REVENUE_SUM, 'revenue')},"
    f" {_money(_AVERAGE, 'average_order_value')}"
    " FROM domain_events_hourly WHERE currency != ''"
    " AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
    " GROUP BY day, currency ORDER BY day, currency"
)
_PRODUCTS = (
    "SELECT product_id, sum(views) AS views FROM product_views_hourly"
    " WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
    " GROUP BY product_id ORDER BY views DESC, product_id"
)

Write = Callable[[bytes], Awaitable[None]]


def _clickhouse_format(fmt: Format, first_page: bool) -> str:
    if fmt != "CSV":
        return "JSONEachRow"  # JSON arrays are made from these lines as they pass
    return "CSVWithNames" if first_page else "CSV"


class _Output:
    """Passes pages on to `write`, counting rows; for JSON it turns ClickHouse's lines of
    objects into one array: `[` before the first page, commas between objects, `]` at close.
    Every report writes at least one page, so the array is always opened."""

    def __init__(self, fmt: Format, write: Write) -> None:
        self._fmt, self._write = fmt, write
        self.rows = 0
        self._pages = 0

    async def page(self, data: bytes) -> None:
        before = self.rows
        if self._fmt == "CSV":  # a quoted value may hold a newline: count records, not lines
            records = sum(1 for _ in csv.reader(io.StringIO(data.decode(), newline="")))
            self.rows += records - (1 if self._pages == 0 and records else 0)  # the header
        else:
            self.rows += data.count(b"\n")
        if self._fmt == "JSON":
            objects = b",\n".join(data.splitlines())
            opening = b"[\n" if self._pages == 0 else b""
            separator = b",\n" if objects and before else b""
            data = opening + separator + objects
        self._pages += 1
        if data:
            await self._write(data)

    async def close(self) -> None:
        if self._fmt == "JSON":
            await self._write(b"\n]\n")


async def _pages(
    warehouse: Warehouse, event_types: tuple[str, ...], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Consecutive hour spans of at most PAGE_ROWS rows each (an hour is never split)."""
    hours = await warehouse.rows(
        "SELECT hour, sum(events) FROM domain_events_hourly"
        " WHERE event_type IN {types:Array(String)}"
        " AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}"
        " GROUP BY hour ORDER BY hour",
        {"types": list(event_types), "start": start, "end": end},
    )
    pages: list[tuple[datetime, datetime]] = []
    page_start, rows = start, 0
    for hour, count in hours:
        hour = hour.replace(tzinfo=start.tzinfo)
        if rows and rows + int(count) > PAGE_ROWS:
            pages.append((page_start, hour))
            page_start, rows = hour, 0
        rows += int(count)
    pages.append((page_start, end))
    return pages


async def write_report(
    warehouse: Warehouse,
    report: ReportType,
    fmt: Format,
    start: datetime,
    end: datetime,
    zone: zoneinfo.ZoneInfo,
    write: Write,
    *,
    funnel_window_seconds: int = funnels.DEFAULT_WINDOW_SECONDS,
    product_page: str = PRODUCT_PAGE_PATTERN,
) -> int:
    """Write the report, page by page; nothing but one page is held in memory. Returns the
    rows written. FUNNELS uses `funnel_window_seconds` (FUNNEL_WINDOW_SECONDS), as
    recompute-funnels does."""
    out = _Output(fmt, write)
    params = {"start": start, "end": end, "zone": zone.key}
    if report in _ROW_REPORTS:
        event_types, select = _ROW_REPORTS[report]
        for number, (page_start, page_end) in enumerate(
            await _pages(warehouse, event_types, start, end)
        ):
            await out.page(
                await warehouse.formatted(
                    _for_format(report, select + _PAGE, fmt) + _ROW_SETTINGS,
                    {"start": page_start, "end": page_end, "zone": zone.key},
                    _clickhouse_format(fmt, number == 0),
                )
            )
    elif report in ("REVENUE", "PRODUCTS"):
        select = _REVENUE if report == "REVENUE" else _PRODUCTS
        await out.page(
            await warehouse.formatted(
                _for_format(report, select, fmt) + _SETTINGS,
                params,
                _clickhouse_format(fmt, True),
            )
        )
    else:
        await out.page(
            await _funnel_report(warehouse, fmt, start, end, funnel_window_seconds, product_page)
        )
    await out.close()
    return out.rows


async def _funnel_report(
    warehouse: Warehouse,
    fmt: Format,
    start: datetime,
    end: datetime,
    window_seconds: int,
    product_page: str,
) -> bytes:
    rows = []
    for funnel in funnels.FUNNELS.values():
        result = await funnels.compute(warehouse, funnel, start, end, window_seconds, product_page)
        for number, (step, visitors) in enumerate(result.steps, start=1):
            rows.append(
                {
                    "funnel": funnel.name,
                    "step_number": number,
                    "step": step,
                    "visitors": visitors,
                    "conversion_rate": result.conversion_rate,
                }
            )
    if fmt != "CSV":
        return msgspec.json.Encoder().encode_lines(rows)
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=_FUNNEL_COLUMNS, lineterminator="\n")
    table.writeheader()
    table.writerows({key: neutralised(value) for key, value in row.items()} for row in rows)
    return out.getvalue().encode()


_FUNNEL_COLUMNS = ("funnel", "step_number", "step", "visitors", "conversion_rate")
