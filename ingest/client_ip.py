"""Which address a request came from, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _parse(address)
    return parsed is not None and any(parsed in net for net in trusted)


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The socket peer, unless it is a trusted proxy: then the right-most untrusted hop.

    Walking from the right means a client cannot pick its own address by sending a
    forged X-Forwarded-For: only hops our own proxies appended are skipped.
    """
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if _parse(hop) is None:
            return peer  # a malformed chain: fall back to what we know
        if not _trusted(hop, trusted):
            return hop
    return peer
