"""Browser, OS, device class and bot flag from a User-Agent header.

A client chooses its user agent, so its cost is bounded: agents are cut to MAX_LENGTH
characters before they are parsed or stored; the crawler list (1,500 patterns) is matched
by one Rust regex set (the engine ua-parser itself runs on: ~15 µs for a 512-character agent,
against ~1.7 ms for the list's Python patterns, same answers on every listed instance); and
the cache of parsed agents is bounded by the bytes of the agents it keys.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import crawleruseragents
import ua_parser
import ua_parser_rs


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


MAX_LENGTH = 512  # longer agents are cut: real ones are under 300 characters
CACHE_BYTES = 4 * 1024 * 1024  # of agent text; real traffic repeats a few thousand agents

_CRAWLERS = ua_parser_rs.UserAgentExtractor(
    [
        (entry["pattern"], "crawler", None, None, None, None)
        for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
    ]
)
_cache: OrderedDict[str, Agent] = OrderedDict()
_cached_bytes = 0


def is_crawler(ua: str) -> bool:
    return _CRAWLERS.extract(ua) is not None


def parse_agent(ua: str) -> Agent:
    """The agent's facts, from the cache when seen recently (least recently used goes first)."""
    global _cached_bytes
    ua = ua[:MAX_LENGTH]
    found = _cache.get(ua)
    if found is not None:
        _cache.move_to_end(ua)
        return found
    found = _parse(ua)
    _cache[ua] = found
    _cached_bytes += len(ua)
    while _cached_bytes > CACHE_BYTES:
        evicted, _ = _cache.popitem(last=False)
        _cached_bytes -= len(evicted)
    return found


def cache_size() -> tuple[int, int]:
    """(entries, bytes of agent text) held by the parse cache."""
    return len(_cache), _cached_bytes


def _parse(ua: str) -> Agent:
    if not ua:
        return Agent("", "", "", "", "", False)
    result = ua_parser.parse(ua)
    browser = result.user_agent
    os = result.os
    device = result.device
    is_bot = is_crawler(ua) or (device is not None and device.family == "Spider")
    return Agent(
        browser=browser.family if browser else "",
        browser_version=_version(browser.major, browser.minor) if browser else "",
        os=os.family if os else "",
        os_version=_version(os.major, os.minor) if os else "",
        device_type=_device_type(ua, os.family if os else "", device.family if device else ""),
        is_bot=is_bot,
    )
