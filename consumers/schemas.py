"""The platform's domain events: the envelope and, per event type, what analytics needs.

Payloads are camelCase; ids are uuids; amounts are exact decimals in major units, sent as a
JSON number or string. Fields beyond these are allowed (publishers evolve) and kept in the
stored payload; none of them is required.
"""

from __future__ import annotations

import decimal
import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from core.contracts import Envelope

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
# Checked in mapping.py: finite, not negative, below 10^32; more than 6 decimal places are
# rounded half-even to the column's Decimal(38, 6) and counted.
Amount = decimal.Decimal
Text = Annotated[str, msgspec.Meta(max_length=1024)]


class Payload(msgspec.Struct, rename="camel", gc=False):
    """Base of every payload; unknown fields are ignored here and kept in the raw payload."""


class OrderItem(msgspec.Struct, rename="camel", gc=False):
    product_id: uuid.UUID
    quantity: Annotated[int, msgspec.Meta(ge=1)]
    unit_price: Amount


class OrderCreated(Payload):
    order_id: uuid.UUID
    customer_id: uuid.UUID
    total_amount: Amount
    currency: Currency
    items: list[OrderItem]


class PaymentSucceeded(Payload):
    payment_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: Amount
    currency: Currency


class BookingCreated(Payload):
    booking_id: uuid.UUID
    customer_id: uuid.UUID
    showroom_id: uuid.UUID
    appointment_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    scheduled_at: datetime


class BookingCancelled(Payload):
    booking_id: uuid.UUID
    customer_id: uuid.UUID
    reason: Text | None = None


class BlogPublished(Payload):
    blog_id: uuid.UUID
    slug: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    title: Text


class InventoryUpdated(Payload):
    product_id: uuid.UUID
    quantity: int


class ReviewCreated(Payload):
    review_id: uuid.UUID
    product_id: uuid.UUID
    customer_id: uuid.UUID
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]


class BrochureRequestSubmitted(Payload):
    request_id: uuid.UUID
    customer_id: uuid.UUID | None = None


class NewsletterSubscriptionCreated(Payload):
    subscription_id: uuid.UUID
    customer_id: uuid.UUID | None = None


class PagePublished(Payload):
    """`page-published`: no required fields; the payload is stored as received."""


class ProfileUpdated(Payload):
    """`profile-updated`: no required fields; the payload is stored as received."""


class ProductCreated(Payload):
    """`product-created`: no required fields; the payload is stored as received."""


class Contract(msgspec.Struct, frozen=True):
    event_type: str
    payload: type[Payload]


# routing key -> the eventType it carries and its payload schema
CONTRACTS: dict[str, Contract] = {
    "lomash.orders.created": Contract("order-created", OrderCreated),
    "lomash.payments.succeeded": Contract("payment-succeeded", PaymentSucceeded),
    "lomash.bookings.created": Contract("booking-created", BookingCreated),
    "lomash.bookings.cancelled": Contract("booking-cancelled", BookingCancelled),
    "lomash.content.blog.published": Contract("blog-published", BlogPublished),
    "lomash.inventory.updated": Contract("inventory-updated", InventoryUpdated),
    "lomash.customers.review.created": Contract("review-created", ReviewCreated),
    "lomash.brochure.request.submitted": Contract(
        "brochure-request-submitted", BrochureRequestSubmitted
    ),
    "lomash.newsletter.subscription.created": Contract(
        "newsletter-subscription-created", NewsletterSubscriptionCreated
    ),
    "lomash.content.page.published": Contract("page-published", PagePublished),
    "lomash.customers.profile.updated": Contract("profile-updated", ProfileUpdated),
    "lomash.products.created": Contract("product-created", ProductCreated),
}

ENVELOPE_DECODER = msgspec.json.Decoder(Envelope[msgspec.Raw])
PAYLOAD_DECODERS = {key: msgspec.json.Decoder(c.payload) for key, c in CONTRACTS.items()}
