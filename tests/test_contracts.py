"""Published messages and export formats exactly as the platform's spec gives them.

The decoders here are written from the spec's "Published" table (docs/contracts.md keeps it),
not from core/contracts.py:
a real consumer bound to the exchange receives each message and decodes it strictly (every
field the spec names, of the spec's type; extra fields allowed, as the spec allows).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, Literal, TypeVar

import aio_pika
import msgspec
import pytest

from cli.demo_traffic import default_start, generate, load
from core.clickhouse import Warehouse
from tests.conftest import Running, event, job_of, take
from tests.documented import assert_as_documented, examples
from tests.test_dashboard_api import ADMIN_ID, bearer, token
from tests.test_exports import EXPORTS, finished, request_body
from workers import jobs

P = TypeVar("P")


class Envelope(msgspec.Struct, Generic[P], rename="camel"):
    event_id: uuid.UUID
    event_type: str
    timestamp: datetime
    version: Literal["1.0"]
    payload: P


class EventTracked(msgspec.Struct, rename="camel"):
    tracking_event_id: uuid.UUID
    event_type: Literal[
        "PAGEVIEW",
        "CLICK",
        "FILTER_APPLY",
        "PRODUCT_VIEW",
        "ADD_TO_WISHLIST",
        "BOOKING_START",
        "BOOKING_COMPLETE",
        "BROCHURE_REQUEST",
        "CONTACT_SUBMIT",
    ]
    session_id: uuid.UUID
    user_id: uuid.UUID | None
    properties: dict[str, object]


class Step(msgspec.Struct):
    step: str
    count: int


class FunnelCompleted(msgspec.Struct, rename="camel"):
    funnel_id: uuid.UUID
    funnel_name: Literal["BOOKING", "CHECKOUT"]
    period_from: datetime
    period_to: datetime
    steps: list[Step]
    conversion_rate: float


class DashboardRefreshed(msgspec.Struct, rename="camel"):
    snapshot_id: uuid.UUID
    computed_at: datetime


class ReportGenerated(msgspec.Struct, rename="camel"):
    export_id: uuid.UUID
    report_type: str
    format: str
    download_url: str
    expires_at: datetime
    requested_by: uuid.UUID  # the admin's user id: notification-service emails them


def received(message: aio_pika.abc.AbstractIncomingMessage, payload: type[P]) -> Envelope[P]:
    return msgspec.json.decode(message.body, type=Envelope[payload])  # type: ignore[valid-type]


Listen = Callable[..., Awaitable[aio_pika.abc.AbstractQueue]]


async def test_event_tracked(server: Running, listen: Listen) -> None:
    queue = await listen("lomash.analytics.event.tracked")
    user = str(uuid.uuid4())
    sent = event(userId=user, eventType="BOOKING_START")
    answer = await server.http.post("/v1/analytics/track", json=sent)
    await server.drain()
    (message,) = await take(queue, 1)
    assert_as_documented("lomash.analytics.event.tracked", message.body)
    envelope = received(message, EventTracked)
    assert envelope.event_type == "event-tracked"
    assert str(envelope.payload.tracking_event_id) == answer.json()["eventId"]
    assert envelope.payload.event_type == "BOOKING_START"
    assert str(envelope.payload.session_id) == sent["sessionId"]
    assert str(envelope.payload.user_id) == user
    assert envelope.payload.properties == sent["properties"]
    assert message.message_id == str(envelope.event_id)


@pytest.fixture
async def demo(warehouse: Warehouse) -> Warehouse:
    await load(warehouse, generate(default_start(days=10), days=10, sessions_per_day=60, seed=9))
    return warehouse


async def test_funnel_completed(server: Running, demo: Warehouse, listen: Listen) -> None:
    queue = await listen("lomash.analytics.funnel.completed")
    await server.services.runtime.publisher.connected.wait()
    await jobs.recompute_funnels({"job": job_of(server, demo)})
    taken = await take(queue, 2)
    for message in taken:
        assert_as_documented("lomash.analytics.funnel.completed", message.body)
    found = {e.payload.funnel_name: e for e in (received(m, FunnelCompleted) for m in taken)}
    assert {e.event_type for e in found.values()} == {"funnel-completed"}
    booking, checkout = found["BOOKING"].payload, found["CHECKOUT"].payload
    assert [s.step for s in booking.steps] == ["PAGEVIEW", "BOOKING_START", "BOOKING_COMPLETE"]
    assert [s.step for s in checkout.steps] == [
        "PRODUCT_VIEW",
        "ADD_TO_WISHLIST",
        "order-created",
        "payment-succeeded",
    ]
    for funnel in (booking, checkout):
        assert funnel.period_to - funnel.period_from == timedelta(days=30)
        first, last = funnel.steps[0].count, funnel.steps[-1].count
        assert funnel.conversion_rate == (round(last / first * 100, 2) if first else 0.0)
    assert booking.funnel_id != checkout.funnel_id
    stored = {str(r[0]) for r in await demo.rows("SELECT funnel_id FROM funnels")}
    assert stored == {str(booking.funnel_id), str(checkout.funnel_id)}


async def test_dashboard_refreshed(server: Running, demo: Warehouse, listen: Listen) -> None:
    queue = await listen("lomash.analytics.dashboard.refreshed")
    await server.services.runtime.publisher.connected.wait()
    await jobs.rebuild_dashboards({"job": job_of(server, demo)})
    taken = await take(queue, 4)
    for message in taken:
        assert_as_documented("lomash.analytics.dashboard.refreshed", message.body)
    refreshed = [received(m, DashboardRefreshed) for m in taken]
    assert {e.event_type for e in refreshed} == {"dashboard-refreshed"}
    ids = {r[0] for r in await demo.rows("SELECT snapshot_id FROM dashboard_snapshots")}
    assert {e.payload.snapshot_id for e in refreshed} == ids
    assert len(ids) == 4


async def test_report_generated(server: Running, demo: Warehouse, listen: Listen) -> None:
    queue = await listen("lomash.analytics.report.generated")
    created = await server.http.post(EXPORTS, json=request_body(), headers=bearer(token()))
    state = await finished(server, created.json()["exportId"])
    (message,) = await take(queue, 1)
    assert_as_documented("lomash.analytics.report.generated", message.body)
    envelope = received(message, ReportGenerated)
    assert envelope.event_type == "report-generated"
    payload = envelope.payload
    assert str(payload.export_id) == created.json()["exportId"]
    assert (payload.report_type, payload.format) == ("ORDERS", "CSV")
    assert payload.download_url == state["downloadUrl"]
    assert payload.requested_by == uuid.UUID(ADMIN_ID)
    # The spec: the link lives seven days.
    assert timedelta(days=7) - timedelta(minutes=2) < payload.expires_at - datetime.now(UTC)
    assert payload.expires_at - datetime.now(UTC) <= timedelta(days=7)


TRICKY = 'Design, "deluxe"\nsecond line'


@pytest.mark.parametrize("fmt", ["CSV", "JSON", "NDJSON"])
async def test_exports_carry_quotes_commas_and_newlines_exactly(
    server: Running, warehouse: Warehouse, fmt: str
) -> None:
    at = datetime.now(UTC) - timedelta(days=1)
    await warehouse.command(
        "INSERT INTO analytics_events (event_id, event_type, routing_key, version, occurred_at,"
        " received_at, booking_id, appointment_type) VALUES (generateUUIDv4(), 'booking-created',"
        " 'lomash.bookings.created', '1.0', {at:DateTime64(3, 'UTC')}, {at:DateTime64(3, 'UTC')},"
        " generateUUIDv4(), {kind:String})",
        {"at": at, "kind": TRICKY},
    )
    created = await server.http.post(
        EXPORTS, json=request_body("BOOKINGS", fmt), headers=bearer(token())
    )
    state = await finished(server, created.json()["exportId"])
    text = (await server.http.get(state["downloadUrl"])).text
    if fmt == "CSV":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    elif fmt == "JSON":
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines()]
    assert [row["appointment_type"] for row in rows] == [TRICKY]


async def test_an_empty_json_export_is_an_empty_array(
    server: Running, warehouse: Warehouse
) -> None:
    created = await server.http.post(
        EXPORTS, json=request_body("BOOKINGS", "JSON"), headers=bearer(token())
    )
    state = await finished(server, created.json()["exportId"])
    assert state["rows"] == 0
    assert json.loads((await server.http.get(state["downloadUrl"])).text) == []


async def test_an_unknown_format_is_refused(server: Running) -> None:
    answer = await server.http.post(
        EXPORTS, json=request_body("ORDERS", "XLSX"), headers=bearer(token())
    )
    assert answer.status_code == 400
    assert answer.json()["path"] == "$.format"


def test_every_published_topic_has_an_example_in_the_docs() -> None:
    from core import contracts

    topics = {
        value.routing_key
        for value in vars(contracts).values()
        if isinstance(value, contracts.Topic)
    }
    assert set(examples()) == topics
