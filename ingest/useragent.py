"""Browser, OS, device class and bot flag from a User-Agent header."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import crawleruseragents
import ua_parser


class Agent(NamedTuple):
    browser: str
    browser_version: str
    os: str
    os_version: str
    device_type: str  # mobile | tablet | desktop | "" when there is no user agent
    is_bot: bool


_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS"}
_TABLET_HINTS = ("ipad", "tablet", "kindle", "silk", "playbook", "nexus 7", "nexus 9", "nexus 10")


def _version(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _device_type(ua: str, os_family: str, device_family: str) -> str:
    lowered = ua.lower()
    if any(hint in lowered for hint in _TABLET_HINTS) or "tablet" in device_family.lower():
        return "tablet"
    if os_family == "Android" and "mobile" not in lowered:
        return "tablet"  # Android phones say "Mobile"; Android tablets do not
    if os_family in _MOBILE_OS or "mobile" in lowered:
        return "mobile"
    return "desktop"


@lru_cache(maxsize=32_768)
def parse_agent(ua: str) -> Agent:
    """Parsing is ~20 µs and crawler matching ~100 µs; real traffic repeats a few thousand UAs."""
    if not ua:
        return Agent("", "", "", "", "", False)
    result = ua_parser.parse(ua)
    browser = result.user_agent
    os = result.os
    device = result.device
    is_bot = crawleruseragents.is_crawler(ua) or (device is not None and device.family == "Spider")
    return Agent(
        browser=browser.family if browser else "",
        browser_version=_version(browser.major, browser.minor) if browser else "",
        os=os.family if os else "",
        os_version=_version(os.major, os.minor) if os else "",
        device_type=_device_type(ua, os.family if os else "", device.family if device else ""),
        is_bot=is_bot,
    )
