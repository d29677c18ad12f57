"""What each `analytics_events` column can hold (sql/0004), checked before ClickHouse sees a row.

ClickHouse does not refuse every value its column cannot hold: an integer past Int64 wraps
round to another number, a time outside DateTime64's documented range is stored as something
else. So every value a payload can put in a column is checked here, against the column's own
type, and a message whose value does not fit is dead-lettered naming the column.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Check = Callable[[Any], str | None]

DECIMAL_PLACES = 6  # Decimal(38, 6)
DECIMAL_LIMIT = decimal.Decimal(10) ** (38 - DECIMAL_PLACES)  # exclusive: 32 integer digits
# DateTime64's documented range; outside it ClickHouse stores some other time.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


def integer(low: int, high: int, type_name: str) -> Check:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"{value} does not fit {type_name}"

    return check


def amount(value: decimal.Decimal) -> str | None:
    """Decimal(38, 6), not negative: what the platform's amounts are. More decimal places
    than six are no reason to refuse (see `to_scale`)."""
    if not value.is_finite():
        return "not a finite amount"
    if value < 0:
        return f"negative amount {value}"
    if value >= DECIMAL_LIMIT:
        return f"{value} does not fit Decimal(38, {DECIMAL_PLACES}) (must be below 10^32)"
    return None


_QUANTUM = decimal.Decimal(1).scaleb(-DECIMAL_PLACES)
# Enough digits for any amount below 10^32 at six places, so quantize never raises.
_EXACT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN)


def to_scale(value: decimal.Decimal) -> tuple[decimal.Decimal, bool]:
    """`value` (finite, below the limit) at most at the column's six places, rounded half-even;
    and whether it was rounded. A Node service's `129.99 + 49.99` is 179.98000000000002: a
    float's noise, not a different amount."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or exponent >= -DECIMAL_PLACES:
        return value, False
    return value.quantize(_QUANTUM, context=_EXACT), True


def instant(value: datetime) -> str | None:
    if EARLIEST <= value <= LATEST:
        return None
    return f"{value.isoformat()} is outside DateTime64's range (1900 to 2299)"


def text(limit: int) -> Check:
    def check(value: str) -> str | None:
        size = len(value.encode())
        return None if size <= limit else f"{size} bytes, more than {limit}"

    return check


# column -> its check; None values are NULL and always fit.
LIMITS: dict[str, Check] = {
    "event_type": text(64),
    "routing_key": text(128),
    "version": text(32),
    "occurred_at": instant,
    "received_at": instant,
    "amount": amount,
    "currency": text(3),
    "quantity": integer(-(2**63), 2**63 - 1, "Int64"),
    "rating": integer(0, 255, "UInt8"),
    "appointment_type": text(64),
    "scheduled_at": instant,
    "payload": text(1024 * 1024),
}


def violation(row: Any) -> str | None:
    """The first column of `row` whose value its ClickHouse type cannot hold, described."""
    for column, check in LIMITS.items():
        value = getattr(row, column)
        if value is None:
            continue
        problem = check(value)
        if problem is not None:
            return f"column {column}: {problem}"
    return None
