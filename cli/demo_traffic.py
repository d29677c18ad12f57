"""A deterministic generator of believable Lomash Wood traffic, for `analytics demo` and tests.

Browsing sessions (landing pages, product views, wishlists, bookings started and completed,
brochure requests, blog reading), a few bots, known customers who come back, and the domain
events their actions cause (orders, payments, bookings and cancellations, reviews, brochure
and newsletter sign-ups). The same seed gives the same traffic.
"""

from __future__ import annotations

import decimal
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar
from urllib.parse import parse_qs

import msgspec

from consumers.mapping import DomainRow, to_row
from core.clickhouse import Warehouse
from tracked.row import TrackingRow

SITE = "https://www.lomashwood.co.uk"
KITCHENS = ["shaker-oak", "handleless-gloss", "in-frame-sage", "modern-walnut", "country-cream"]
BEDROOMS = ["fitted-white", "sliding-oak", "walk-in-graphite"]
BLOG = ["kitchen-trends-2026", "small-kitchen-ideas", "choosing-worktops", "bedroom-storage"]
# What a product view carries beside its id: the range and the price shown (a number).
PRICES = {"shaker-oak": 1249.5, "handleless-gloss": 1899, "in-frame-sage": 2450.75}
BROCHURES = ["kitchens-2026", "bedrooms-2026", "made-to-measure"]
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)


class Agent(NamedTuple):
    user_agent: str
    device: str
    browser: str
    os: str
    weight: int


AGENTS = [
    Agent(CHROME, "desktop", "Chrome", "Windows", 30),
    Agent(IPHONE, "mobile", "Mobile Safari", "iOS", 28),
    Agent(ANDROID, "mobile", "Chrome Mobile", "Android", 16),
    Agent(MAC_SAFARI, "desktop", "Safari", "Mac OS X", 12),
    Agent(IPAD, "tablet", "Mobile Safari", "iOS", 8),
    Agent(FIREFOX, "desktop", "Firefox", "Linux", 6),
]


class Place(NamedTuple):
    country: str
    region: str
    city: str
    weight: int


# The networks of the MaxMind test database (tests/data), so that the demo's places are ones
# the service's own GeoIP step can produce.
PLACES = [
    Place("GB", "England", "London", 55),
    Place("GB", "West Berkshire", "Boxford", 25),
    Place("SE", "Östergötland County", "Linköping", 8),
    Place("US", "Washington", "Milton", 7),
    Place("NO", "", "", 5),
]


class Source(NamedTuple):
    referrer: str
    utm: str  # the landing URL's query
    weight: int


SOURCES = [
    Source("", "", 30),
    Source("https://www.google.com/", "", 30),
    Source("https://www.bing.com/", "", 6),
    Source("https://www.houzz.co.uk/", "", 6),
    Source(
        "https://www.facebook.com/",
        "utm_source=facebook&utm_medium=social&utm_campaign=kitchens-2026",
        10,
    ),
    Source("", "utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale", 10),
    Source("https://www.google.com/", "utm_source=google&utm_medium=cpc&utm_campaign=brand", 8),
]


@dataclass
class Traffic:
    tracking: list[TrackingRow] = field(default_factory=list)
    domain: list[DomainRow] = field(default_factory=list)


@dataclass
class _Visit:
    rng: random.Random
    traffic: Traffic
    session: uuid.UUID
    user: uuid.UUID | None
    agent: Agent
    place: Place
    source: Source
    bot: bool
    clock: datetime
    seq: int = 0
    landing: str = ""
    started: datetime | None = None

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def tick(self, low: float = 5, high: float = 120) -> datetime:
        self.clock += timedelta(milliseconds=int(self.rng.uniform(low, high) * 1000))
        return self.clock

    def track(
        self, event_type: str, path: str, properties: dict[str, object] | None = None
    ) -> None:
        at = self.tick()
        self.seq += 1
        received = at + timedelta(milliseconds=self.rng.randint(20, 1500))
        url = SITE + path
        if not self.landing:
            url += f"?{self.source.utm}" if self.source.utm else ""
            self.landing, self.started = url, received
        utm = parse_qs(self.source.utm)
        self.traffic.tracking.append(
            TrackingRow(
                event_id=self.uuid(),
                event_type=event_type,
                session_id=self.session,
                user_id=self.user,
                received_at=received,
                client_timestamp=at,
                occurred_at=at,
                url=url,
                referrer=self.source.referrer if self.seq == 1 else self.landing,
                user_agent=self.agent.user_agent,
                device_type=self.agent.device,
                browser=self.agent.browser,
                os=self.agent.os,
                is_bot=self.bot,
                country=self.place.country,
                region=self.place.region,
                city=self.place.city,
                session_seq=self.seq,
                # As the beacon path stores them: the session's first sight, landing page,
                # referrer and UTM tags, on every event of the session.
                session_started_at=self.started,
                landing_page=self.landing,
                entry_referrer=self.source.referrer,
                utm_source=utm.get("utm_source", [""])[0],
                utm_medium=utm.get("utm_medium", [""])[0],
                utm_campaign=utm.get("utm_campaign", [""])[0],
                properties=msgspec.json.encode(properties or {}).decode(),
            )
        )

    def domain(self, event_type: str, routing_key: str, **payload: object) -> None:
        """The event as the platform would publish it, mapped by the consumer's own code."""
        at = self.tick(1, 30)
        body = msgspec.json.encode(
            {
                "eventId": str(self.uuid()),
                "eventType": event_type,
                "timestamp": at.isoformat(),
                "version": "1.0",
                "payload": {
                    k: str(v) if isinstance(v, uuid.UUID | decimal.Decimal) else v
                    for k, v in payload.items()
                },
            }
        )
        received = at + timedelta(milliseconds=self.rng.randint(5, 500))
        self.traffic.domain.append(to_row(routing_key, body, received))


def generate(start: datetime, days: int, sessions_per_day: int, seed: int = 7) -> Traffic:
    rng = random.Random(seed)
    traffic = Traffic()
    customers = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(sessions_per_day)]
    products = {slug: uuid.UUID(int=rng.getrandbits(128), version=4) for slug in KITCHENS}
    showroom = uuid.UUID(int=rng.getrandbits(128), version=4)
    for day in range(days):
        for _ in range(sessions_per_day):
            began = start + timedelta(days=day, seconds=rng.uniform(0, 86400))
            bot = rng.random() < 0.04
            known = not bot and rng.random() < 0.45
            visit = _Visit(
                rng=rng,
                traffic=traffic,
                session=uuid.UUID(int=rng.getrandbits(128), version=4),
                user=rng.choice(customers) if known else None,
                agent=BOT if bot else _pick(rng, AGENTS),
                place=_pick(rng, PLACES),
                source=_pick(rng, SOURCES),
                bot=bot,
                clock=began,
            )
            _browse(visit, products, showroom)
    traffic.tracking.sort(key=lambda r: r.received_at)
    traffic.domain.sort(key=lambda r: r.occurred_at)
    return traffic


BOT = Agent(GOOGLEBOT, "desktop", "Googlebot", "", 0)


Choice = TypeVar("Choice", Agent, Place, Source)


def _pick(rng: random.Random, choices: list[Choice]) -> Choice:
    return rng.choices(choices, weights=[c.weight for c in choices])[0]


def _browse(visit: _Visit, products: dict[str, uuid.UUID], showroom: uuid.UUID) -> None:
    rng = visit.rng
    if rng.random() < 0.2:
        slug = rng.choice(BLOG)
        visit.track("PAGEVIEW", f"/blog/{slug}")
        if rng.random() < 0.05 and visit.user:
            visit.domain(
                "blog-published",
                "lomash.content.blog.published",
                blogId=visit.uuid(),
                slug=slug,
                title=slug.replace("-", " "),
            )
        return
    visit.track("PAGEVIEW", rng.choice(["/", "/kitchens", "/bedrooms"]))
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.6:
            slug = rng.choice(KITCHENS)
            visit.track("PAGEVIEW", f"/kitchens/{slug}")
            shown: dict[str, object] = {"productId": slug, "range": "kitchens"}
            if slug in PRICES:
                shown["price"] = PRICES[slug]
            visit.track("PRODUCT_VIEW", f"/kitchens/{slug}", shown)
            if rng.random() < 0.3:
                visit.track("ADD_TO_WISHLIST", f"/kitchens/{slug}", {"productId": slug})
                if visit.user and rng.random() < 0.5:
                    _order(visit, products[slug])
        elif kind < 0.8:
            slug = rng.choice(BEDROOMS)
            visit.track("PAGEVIEW", f"/bedrooms/{slug}")
            colour = rng.choice(["white", "oak"])
            visit.track("FILTER_APPLY", "/bedrooms", {"filter": colour, "facet": "colour"})
        else:
            visit.track("CLICK", "/kitchens", {"target": "brochure-banner"})
    if rng.random() < 0.25:
        visit.track("BOOKING_START", "/book-appointment")
        if rng.random() < 0.6:
            visit.track("BOOKING_COMPLETE", "/book-appointment/done")
            if visit.user:
                booking = visit.uuid()
                visit.domain(
                    "booking-created",
                    "lomash.bookings.created",
                    bookingId=booking,
                    customerId=visit.user,
                    showroomId=showroom,
                    appointmentType="KITCHEN_DESIGN",
                    scheduledAt=(visit.clock + timedelta(days=5)).isoformat(),
                )
                if rng.random() < 0.15:
                    visit.domain(
                        "booking-cancelled",
                        "lomash.bookings.cancelled",
                        bookingId=booking,
                        customerId=visit.user,
                    )
    if rng.random() < 0.1:
        # Which brochure follows from the session (no draw: the traffic stays as it was).
        brochure = BROCHURES[visit.session.int % len(BROCHURES)]
        visit.track("BROCHURE_REQUEST", "/brochure", {"brochure": brochure})
        request = visit.uuid()
        visit.domain(
            "brochure-request-submitted",
            "lomash.brochure.request.submitted",
            requestId=request,
        )
    if rng.random() < 0.05:
        subscription = visit.uuid()
        visit.domain(
            "newsletter-subscription-created",
            "lomash.newsletter.subscription.created",
            subscriptionId=subscription,
        )


def _order(visit: _Visit, product: uuid.UUID) -> None:
    rng = visit.rng
    order = visit.uuid()
    quantity = rng.randint(1, 2)
    unit = decimal.Decimal(rng.randint(120_000, 900_000)) / 100
    total = unit * quantity
    assert visit.user is not None
    visit.domain(
        "order-created",
        "lomash.orders.created",
        orderId=order,
        customerId=visit.user,
        totalAmount=total,
        currency="GBP",
        items=[{"productId": str(product), "quantity": quantity, "unitPrice": str(unit)}],
    )
    if rng.random() < 0.85:
        payment = visit.uuid()
        visit.domain(
            "payment-succeeded",
            "lomash.payments.succeeded",
            paymentId=payment,
            orderId=order,
            customerId=visit.user,
            amount=total,
            currency="GBP",
        )
    if rng.random() < 0.3:
        review = visit.uuid()
        visit.domain(
            "review-created",
            "lomash.customers.review.created",
            reviewId=review,
            productId=product,
            customerId=visit.user,
            rating=rng.randint(3, 5),
        )


async def load(warehouse: Warehouse, traffic: Traffic, chunk: int = 50_000) -> None:
    """Insert through the same JSONCompactEachRow path as the service, so the views fire."""
    encoder = msgspec.json.Encoder()
    for table, rows, columns in (
        ("tracking_events", traffic.tracking, TrackingRow.__struct_fields__),
        ("analytics_events", traffic.domain, DomainRow.__struct_fields__),
    ):
        for at in range(0, len(rows), chunk):
            part = rows[at : at + chunk]
            await warehouse.insert_lines(
                table, columns, encoder.encode_lines(part), dedup_token=uuid.uuid4().hex
            )


def default_start(now: datetime | None = None, days: int = 60) -> datetime:
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)
