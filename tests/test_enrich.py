"""The pure enrichment steps, one behaviour at a time."""

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ingest.client_ip import client_ip, rate_key
from ingest.enrich import Context, enrich
from ingest.geo import GeoLocator, Place
from ingest.schema import decode_event
from ingest.useragent import parse_agent
from tests.conftest import GEOIP_DB, encode, event
from tracked.row import TrackingRow

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # An untrusted peer cannot choose its address with a header.
        ("203.0.113.9", "81.2.69.160", "203.0.113.9"),
        ("10.1.2.3", "81.2.69.160", "81.2.69.160"),
        # The client put a fake first hop; our proxy appended the real one: the real one wins.
        ("10.1.2.3", "1.1.1.1, 81.2.69.160", "81.2.69.160"),
        ("10.1.2.3", "81.2.69.160, 10.9.9.9", "81.2.69.160"),
        ("::1", "2a02:cf40::1", "2a02:cf40::1"),
        ("10.1.2.3", "not-an-ip", "10.1.2.3"),
        ("10.1.2.3", "10.4.4.4", "10.1.2.3"),
        # IPv4-mapped IPv6 peers and hops are their IPv4 selves (and so can be trusted).
        ("::ffff:10.1.2.3", "81.2.69.160", "81.2.69.160"),
        ("10.1.2.3", "::ffff:81.2.69.160", "81.2.69.160"),
        ("10.1.2.3", "81.2.69.160, ::ffff:10.9.9.9", "81.2.69.160"),
    ],
)
def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert client_ip(peer, [forwarded] if forwarded else [], PROXIES) == expected


def test_every_forwarded_for_line_counts_in_order() -> None:
    # The client sent its own X-Forwarded-For line; our proxy appended a second line with the
    # address it saw. Reading only the first line would let the client pick its address.
    lines = ["1.1.1.1", "81.2.69.160"]
    assert client_ip("10.1.2.3", lines, PROXIES) == "81.2.69.160"
    assert client_ip("10.1.2.3", ["1.1.1.1, 2.2.2.2", "81.2.69.160, 10.9.9.9"], PROXIES) == (
        "81.2.69.160"
    )


def test_ipv6_clients_are_rate_limited_by_their_64() -> None:
    assert rate_key("2a02:cf40:1:2:aaaa::1") == rate_key("2a02:cf40:1:2:bbbb::9")
    assert rate_key("2a02:cf40:1:2::1") == "2a02:cf40:1:2::/64"
    assert rate_key("2a02:cf40:1:3::1") != rate_key("2a02:cf40:1:2::1")
    assert rate_key("::ffff:81.2.69.160") == rate_key("81.2.69.160") == "81.2.69.160"


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_ip("10.1.2.3", ["81.2.69.160"], ()) == "10.1.2.3"


@pytest.mark.parametrize(
    ("address", "place"),
    [
        ("81.2.69.160", ("GB", "England", "London")),
        ("2.125.160.216", ("GB", "West Berkshire", "Boxford")),
        ("89.160.20.112", ("SE", "Östergötland County", "Linköping")),
        ("2a02:cf40::1", ("NO", "", "")),
        ("8.8.8.8", ("", "", "")),  # not in the test database
        ("192.168.1.10", ("", "", "")),  # private
        ("127.0.0.1", ("", "", "")),
        ("garbage", ("", "", "")),
    ],
)
def test_geolocation(address: str, place: tuple[str, str, str]) -> None:
    locator = GeoLocator(str(GEOIP_DB))
    assert locator.locate(address) == place
    locator.close()


@pytest.mark.parametrize(
    ("ua", "browser", "os", "device", "bot"),
    [
        (IPHONE, "Mobile Safari", "iOS", "mobile", False),
        (ANDROID_TABLET, "Chrome", "Android", "tablet", False),
        (WINDOWS, "Chrome", "Windows", "desktop", False),
        (GOOGLEBOT, "Googlebot", "", "desktop", True),
        ("curl/8.5.0", "curl", "", "desktop", True),
        ("", "", "", "", False),
    ],
)
def test_user_agent_parsing(ua: str, browser: str, os: str, device: str, bot: bool) -> None:
    agent = parse_agent(ua)
    assert (agent.browser, agent.os, agent.device_type, agent.is_bot) == (
        browser,
        os,
        device,
        bot,
    )


def _row(**overrides: object) -> TrackingRow:
    (row,) = enrich(
        [decode_event(encode(event(**overrides)))],
        Context(
            received_at=datetime(2026, 3, 29, 12, 0, tzinfo=UTC),
            place=Place(("GB", "England", "London")),
        ),
    )
    return row


def test_enrich_fills_geo_agent_and_keeps_the_sent_device_type() -> None:
    sent = event()
    sent["metadata"]["userAgent"] = IPHONE
    sent["metadata"]["deviceType"] = "TABLET"
    (row,) = enrich([decode_event(encode(sent))], Context(received_at=datetime.now(UTC)))
    assert (row.browser, row.os, row.os_version) == ("Mobile Safari", "iOS", "17.5")
    assert row.device_type == "tablet"  # the client said so; we only fill a gap
    assert row.is_bot is False


def test_device_type_is_derived_when_missing() -> None:
    sent = event()
    sent["metadata"] = {"url": "https://x.test/", "userAgent": ANDROID_TABLET}
    (row,) = enrich([decode_event(encode(sent))], Context(received_at=datetime.now(UTC)))
    assert row.device_type == "tablet"


def test_bot_is_flagged_not_dropped() -> None:
    sent = event()
    sent["metadata"]["userAgent"] = GOOGLEBOT
    (row,) = enrich([decode_event(encode(sent))], Context(received_at=datetime.now(UTC)))
    assert row.is_bot is True


def test_geo_comes_from_the_context() -> None:
    row = _row()
    assert (row.country, row.region, row.city) == ("GB", "England", "London")


@pytest.mark.parametrize(
    ("client", "trusted"),
    [
        (timedelta(seconds=-3), True),
        (timedelta(hours=-23), True),
        (timedelta(minutes=4), True),
        (timedelta(hours=-25), False),  # a stale offline queue or a wrong clock
        (timedelta(minutes=6), False),  # a clock running fast
        (timedelta(days=-400), False),
    ],
)
def test_client_clock_is_believed_only_within_the_skew_window(
    client: timedelta, trusted: bool
) -> None:
    received = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    row = _row(timestamp=(received + client).isoformat())
    assert row.client_timestamp == received + client  # always kept as sent
    assert row.received_at == received
    assert row.occurred_at == (received + client if trusted else received)


def test_server_makes_a_uuid7_only_when_the_client_sent_no_event_id() -> None:
    mine = uuid.uuid4()
    assert _row(eventId=str(mine)).event_id == mine
    assert _row().event_id.version == 7
