"""A validated domain event becomes one row of `analytics_events`."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, datetime

import msgspec

from consumers import columns
from consumers.schemas import (
    CONTRACTS,
    ENVELOPE_DECODER,
    PAYLOAD_DECODERS,
    BlogPublished,
    BookingCancelled,
    BookingCreated,
    BrochureRequestSubmitted,
    InventoryUpdated,
    NewsletterSubscriptionCreated,
    OrderCreated,
    Payload,
    PaymentSucceeded,
    ReviewCreated,
)
from core.metrics import AMOUNTS_ROUNDED


class Invalid(Exception):
    """The message cannot become a row; the text is the dead-letter reason."""


class DomainRow(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    event_id: uuid.UUID
    event_type: str
    routing_key: str
    version: str
    occurred_at: datetime
    received_at: datetime
    customer_id: uuid.UUID | None = None
    order_id: uuid.UUID | None = None
    payment_id: uuid.UUID | None = None
    booking_id: uuid.UUID | None = None
    product_id: uuid.UUID | None = None
    showroom_id: uuid.UUID | None = None
    entity_id: uuid.UUID | None = None
    amount: decimal.Decimal | None = None
    currency: str = ""
    quantity: int | None = None
    rating: int | None = None
    appointment_type: str = ""
    scheduled_at: datetime | None = None
    payload: str = "{}"


def _amount(value: decimal.Decimal, field: str) -> decimal.Decimal:
    problem = columns.amount(value)
    if problem is not None:
        raise Invalid(f"payload.{field}: {problem}")
    scaled, rounded = columns.to_scale(value)
    if rounded:
        AMOUNTS_ROUNDED.inc()
    return scaled


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _facts(row: DomainRow, p: Payload) -> None:
    """Copy each payload's facts into the common columns."""
    match p:
        case OrderCreated():
            row.customer_id, row.order_id, row.entity_id = p.customer_id, p.order_id, p.order_id
            row.amount, row.currency = _amount(p.total_amount, "totalAmount"), p.currency
            row.quantity = sum(item.quantity for item in p.items)
            for item in p.items:
                _amount(item.unit_price, "items[].unitPrice")
        case PaymentSucceeded():
            row.customer_id, row.order_id = p.customer_id, p.order_id
            row.payment_id = row.entity_id = p.payment_id
            row.amount, row.currency = _amount(p.amount, "amount"), p.currency
        case BookingCreated():
            row.customer_id, row.showroom_id = p.customer_id, p.showroom_id
            row.booking_id = row.entity_id = p.booking_id
            row.appointment_type, row.scheduled_at = p.appointment_type, _utc(p.scheduled_at)
        case BookingCancelled():
            row.customer_id = p.customer_id
            row.booking_id = row.entity_id = p.booking_id
        case BlogPublished():
            row.entity_id = p.blog_id
        case InventoryUpdated():
            row.product_id = row.entity_id = p.product_id
            row.quantity = p.quantity
        case ReviewCreated():
            row.customer_id, row.product_id, row.rating = p.customer_id, p.product_id, p.rating
            row.entity_id = p.review_id
        case BrochureRequestSubmitted():
            row.customer_id, row.entity_id = p.customer_id, p.request_id
        case NewsletterSubscriptionCreated():
            row.customer_id, row.entity_id = p.customer_id, p.subscription_id


# A domain event is a few KiB; a bigger message is refused before it is decoded (the broker's
# own max_message_size bounds what reaches us at all).
MAX_MESSAGE_BYTES = 1024 * 1024


def to_row(routing_key: str, body: bytes, received_at: datetime) -> DomainRow:
    """Decode and validate one message; raises Invalid naming what is wrong."""
    contract = CONTRACTS.get(routing_key)
    if contract is None:
        raise Invalid(f"unknown routing key {routing_key!r}")
    if len(body) > MAX_MESSAGE_BYTES:
        raise Invalid(f"message of {len(body)} bytes; at most {MAX_MESSAGE_BYTES}")
    try:
        envelope = ENVELOPE_DECODER.decode(body)
    except msgspec.ValidationError as error:
        raise Invalid(f"envelope: {error}") from None
    except msgspec.DecodeError as error:
        raise Invalid(f"malformed JSON: {error}") from None
    if envelope.event_type != contract.event_type:
        raise Invalid(
            f"eventType {envelope.event_type!r} does not match routing key {routing_key!r}"
            f" (expected {contract.event_type!r})"
        )
    raw_payload = bytes(envelope.payload)
    try:
        payload = PAYLOAD_DECODERS[routing_key].decode(raw_payload)
    except msgspec.ValidationError as error:
        raise Invalid(f"payload: {str(error).replace('`$', '`$.payload')}") from None
    row = DomainRow(
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        routing_key=routing_key,
        version=str(envelope.version),
        occurred_at=_utc(envelope.timestamp),
        received_at=received_at,
        payload=raw_payload.decode(),
    )
    _facts(row, payload)
    problem = columns.violation(row)
    if problem is not None:
        raise Invalid(problem)
    return row
