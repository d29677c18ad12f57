"""Report exports: each report's rows, formatted by ClickHouse, written as they come.

Formats: `CSV` (a header row, RFC 4180 quoting), `JSON` (one JSON document: an array of row
objects), `NDJSON` (one object per line).

Row-level reports are one query streamed from ClickHouse in pieces of about a megabyte
(Warehouse.stream), in primary-key order so that ClickHouse need not sort them either: memory
stays a few pieces whatever the report's size. Columns:

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

import contextlib
import csv
import io
import re
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

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
_ORDERED = (
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


# One-page reports as JSON: ClickHouse writes the whole array, `[\n{..},\n{..}\n]\n`.
_JSON_ARRAY = ", output_format_json_array_of_rows = 1"
# In ClickHouse's CSV every string is quoted and a quote inside one is doubled, so in a row
# report (whose first column is a quoted local time, starting with a digit) a newline followed
# by a quote and a digit can only be where a record starts: a value's own newline is followed
# by its text (a quote in it doubled), or by the closing quote and then `,` or the record's end.
_RECORD_START = re.compile(rb'\n"[0-9]')


def _row_query(report: str, fmt: Format) -> str:
    """A row report's rows over [start, end), in primary-key order, without SETTINGS."""
    _, select = _ROW_REPORTS[report]
    return _for_format(report, select + _ORDERED, fmt)


def row_report_sql(report: str, fmt: Format) -> str:
    """A row report's query over [start, end): the rows and text the export writes. (The
    benchmark's baseline runs it as one INSERT INTO FUNCTION file.)"""
    return _row_query(report, fmt) + _ROW_SETTINGS + (_JSON_ARRAY if fmt == "JSON" else "")


class _Rows:
    """Counts the rows of a row report's stream, whose pieces are cut anywhere, and turns the
    JSON objects' lines into one array as they pass."""

    def __init__(self, fmt: Format, write: Write) -> None:
        self._fmt, self._write = fmt, write
        self.count = 0
        self._tail = b"\n"  # CSV: what came before the piece (the header ended with a newline)
        self._line = b""  # JSON: an object not yet ended

    async def piece(self, data: bytes) -> None:
        if self._fmt == "CSV":
            # A record start cut across two pieces is found in the tail of the first.
            seen = self._tail + data
            self.count += len(_RECORD_START.findall(seen))
            self._tail = seen[-2:]
        elif self._fmt == "NDJSON":
            self.count += data.count(b"\n")  # JSON escapes newlines inside values
        else:
            data = self._line + data
            cut = data.rfind(b"\n")  # an object's line ends there: JSON has no raw newline
            if cut < 0:
                self._line = data
                return
            objects, self._line = data[:cut], data[cut + 1 :]
            lines = objects.count(b"\n") + 1
            data = (b",\n" if self.count else b"") + objects.replace(b"\n", b",\n")
            self.count += lines
        await self._write(data)


async def _row_report(
    warehouse: Warehouse,
    report: str,
    fmt: Format,
    parameters: dict[str, Any],
    write: Write,
) -> int:
    query = _row_query(report, fmt)
    if fmt == "CSV":  # the header alone, then rows without one (a streamable format)
        await write(
            await warehouse.formatted(
                f"SELECT * FROM ({query}) LIMIT 0{_ROW_SETTINGS}", parameters, "CSVWithNames"
            )
        )
    elif fmt == "JSON":
        await write(b"[\n")
    rows = _Rows(fmt, write)
    pieces = warehouse.stream(
        query + _ROW_SETTINGS, parameters, "CSV" if fmt == "CSV" else "JSONEachRow"
    )
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            await rows.piece(piece)
    if fmt == "JSON":
        await write(b"\n]\n")
    return rows.count


def _one_page_rows(fmt: Format, data: bytes) -> int:
    if fmt == "NDJSON":
        return data.count(b"\n")
    if fmt == "JSON":  # `[\n`, a line per object, `\n]\n`; `[\n\n]\n` when empty
        return 0 if data == b"[\n\n]\n" else data.count(b"\n") - 2
    # Small (days, products), and a product id may start with anything: parsed. A quoted
    # value may hold a newline: records, not lines; less the header.
    return max(0, sum(1 for _ in csv.reader(io.StringIO(data.decode(), newline=""))) - 1)


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
    """Write the report as it comes from ClickHouse; nothing but a few pieces is held in
    memory. Returns the rows written. FUNNELS uses `funnel_window_seconds`
    (FUNNEL_WINDOW_SECONDS), as recompute-funnels does."""
    params = {"start": start, "end": end, "zone": zone.key}
    if report in _ROW_REPORTS:
        return await _row_report(warehouse, report, fmt, params, write)
    if report in ("REVENUE", "PRODUCTS"):
        select = _REVENUE if report == "REVENUE" else _PRODUCTS
        data = await warehouse.formatted(
            _for_format(report, select, fmt) + _SETTINGS + (_JSON_ARRAY if fmt == "JSON" else ""),
            params,
            "CSVWithNames" if fmt == "CSV" else "JSONEachRow",
        )
    else:
        data = await _funnel_report(warehouse, fmt, start, end, funnel_window_seconds, product_page)
    await write(data)
    return _one_page_rows(fmt, data)


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
    if fmt == "NDJSON":
        return msgspec.json.Encoder().encode_lines(rows)
    if fmt == "JSON":  # as ClickHouse writes a one-page report (_JSON_ARRAY)
        return b"[\n" + b",\n".join(msgspec.json.encode(row) for row in rows) + b"\n]\n"
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=_FUNNEL_COLUMNS, lineterminator="\n")
    table.writeheader()
    table.writerows({key: neutralised(value) for key, value in row.items()} for row in rows)
    return out.getvalue().encode()


_FUNNEL_COLUMNS = ("funnel", "step_number", "step", "visitors", "conversion_rate")
