"""Which address a request came from, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# Parsing an address costs microseconds in Python and a client sends many requests; bounded,
# so a client rotating addresses costs at most this many entries.
_CACHED = 8192


@lru_cache(maxsize=_CACHED)
def _parse(address: str) -> Address | None:
    """The address, with an IPv4-mapped IPv6 one (`::ffff:10.1.2.3`) read as its IPv4 self,
    so that it matches IPv4 networks and counts as the same client."""
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in net for net in trusted)


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    """Whether the socket peer `address` is one of our proxies."""
    parsed = _parse(address)
    return parsed is not None and _trusted(parsed, trusted)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The socket peer, unless it is a trusted proxy: then the right-most untrusted hop.

    `forwarded_for` is every X-Forwarded-For header line, in the order received: a proxy may
    append a line of its own rather than extend the client's, and reading only the first line
    would let the client name its own address. Walking from the right means a client cannot
    pick its own address by sending a forged X-Forwarded-For: only hops our own proxies
    appended are skipped.
    """
    own = _parse(peer)
    if own is None:
        return peer
    if not trusted or not forwarded_for or not _trusted(own, trusted):
        return str(own)
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    for hop in reversed(hops):
        parsed = _parse(hop)
        if parsed is None:
            return str(own)  # a malformed chain: fall back to what we know
        if not _trusted(parsed, trusted):
            return str(parsed)
    return str(own)


@lru_cache(maxsize=_CACHED)
def rate_key(address: str) -> str:
    """The rate limit's key for a client: its IPv4 address, or its IPv6 /64 (one subscriber's
    network usually holds a whole /64, so per-address limits would not hold a client)."""
    parsed = _parse(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address if parsed is None else str(parsed)
