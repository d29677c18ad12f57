"""Realistic domain events as the platform's services publish them, one maker per routing key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def _id() -> str:
    return str(uuid.uuid4())


def envelope(event_type: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = {
        "eventId": _id(),
        "eventType": event_type,
        "timestamp": datetime.now(UTC).isoformat(),
        "version": "1.0",
        "payload": payload,
    }
    body.update(overrides)
    return body


def order_created(customer: str | None = None, total: Any = "1249.50") -> dict[str, Any]:
    return envelope(
        "order-created",
        {
            "orderId": _id(),
            "customerId": customer or _id(),
            "totalAmount": total,
            "currency": "GBP",
            "items": [
                {"productId": _id(), "quantity": 1, "unitPrice": "999.50"},
                {"productId": _id(), "quantity": 2, "unitPrice": 125},
            ],
            "channel": "web",  # a field analytics does not know: kept, not required
        },
    )


def payment_succeeded(amount: Any = 1249.5) -> dict[str, Any]:
    return envelope(
        "payment-succeeded",
        {
            "paymentId": _id(),
            "orderId": _id(),
            "customerId": _id(),
            "amount": amount,
            "currency": "GBP",
            "method": "card",
        },
    )


def booking_created() -> dict[str, Any]:
    return envelope(
        "booking-created",
        {
            "bookingId": _id(),
            "customerId": _id(),
            "showroomId": _id(),
            "appointmentType": "KITCHEN_DESIGN",
            "scheduledAt": "2026-12-03T10:30:00Z",
        },
    )


def booking_cancelled() -> dict[str, Any]:
    return envelope(
        "booking-cancelled",
        {"bookingId": _id(), "customerId": _id(), "reason": "Changed plans"},
    )


def blog_published() -> dict[str, Any]:
    return envelope(
        "blog-published",
        {"blogId": _id(), "slug": "shaker-kitchens-2026", "title": "Shaker kitchens in 2026"},
    )


def inventory_updated() -> dict[str, Any]:
    return envelope("inventory-updated", {"productId": _id(), "quantity": 14})


def review_created() -> dict[str, Any]:
    return envelope(
        "review-created",
        {"reviewId": _id(), "productId": _id(), "customerId": _id(), "rating": 5},
    )


def brochure_requested() -> dict[str, Any]:
    return envelope("brochure-request-submitted", {"requestId": _id(), "customerId": None})


def newsletter_subscribed() -> dict[str, Any]:
    return envelope("newsletter-subscription-created", {"subscriptionId": _id()})


def page_published() -> dict[str, Any]:
    return envelope("page-published", {"pageId": _id(), "slug": "showrooms/london"})


def profile_updated() -> dict[str, Any]:
    return envelope("profile-updated", {"customerId": _id(), "changed": ["email"]})


def product_created() -> dict[str, Any]:
    return envelope("product-created", {"productId": _id(), "name": "Shaker oak", "range": 3})


MAKERS = {
    "lomash.orders.created": order_created,
    "lomash.payments.succeeded": payment_succeeded,
    "lomash.bookings.created": booking_created,
    "lomash.bookings.cancelled": booking_cancelled,
    "lomash.content.blog.published": blog_published,
    "lomash.inventory.updated": inventory_updated,
    "lomash.customers.review.created": review_created,
    "lomash.brochure.request.submitted": brochure_requested,
    "lomash.newsletter.subscription.created": newsletter_subscribed,
    "lomash.content.page.published": page_published,
    "lomash.customers.profile.updated": profile_updated,
    "lomash.products.created": product_created,
}
