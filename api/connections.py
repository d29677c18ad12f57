"""The HTTP protocol with the limits a hostile client pushes on: connections per client address
and in all, and a deadline for receiving a request whole.

Sanic's request timeout restarts on every byte received, so a client dripping a header byte
every few seconds holds its socket for good, and enough of them take every descriptor. Here a
request must arrive whole (headers and body) within `REQUEST_DEADLINE_SECONDS` of its first
byte, counted until its answer starts; past the connection caps a new connection is answered
`503` with `Retry-After` and closed at once. A trusted proxy's address is not capped per
address: every client behind it shares it.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from core.metrics import CONNECTIONS_REFUSED
from ingest.client_ip import Network, is_trusted, rate_key

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: 36\r\n\r\n"
    b'{"error":"too many connections"}\r\n\r\n'
)


@dataclass
class ConnectionLimits:
    total: int
    per_address: int
    deadline_s: float
    trusted: tuple[Network, ...] = ()
    open: Counter[str] = field(default_factory=Counter)  # connections by client address
    live: set[GuardedProtocol] = field(default_factory=set)
    _sweeping: bool = False

    def watch(self, protocol: GuardedProtocol) -> None:
        self.live.add(protocol)
        if not self._sweeping:
            self._sweeping = True
            protocol.loop.call_later(self.deadline_s / 4, self._sweep, protocol.loop)

    def _sweep(self, loop: Any) -> None:
        """Close the connections whose request has not arrived whole in time: one pass over
        the open connections every quarter deadline, nothing per request."""
        late = monotonic() - self.deadline_s
        for protocol in list(self.live):
            protocol.expire_before(late)
        if self.live:
            loop.call_later(self.deadline_s / 4, self._sweep, loop)
        else:
            self._sweeping = False


class GuardedProtocol(HttpProtocol):
    __slots__ = ("_address", "_began", "_limits")  # Sanic's protocols are slotted

    def connection_made(self, transport: Any) -> None:
        limits: ConnectionLimits = self.app.ctx.connection_limits
        self._limits = limits
        self._address = ""
        self._began: float | None = None
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else ""
        capped = address and not is_trusted(address, limits.trusted)
        address = rate_key(address) if address else ""  # an IPv6 client holds a /64
        if len(limits.live) >= limits.total:
            self._refuse(transport, "total")
            return
        if capped and limits.open[address] >= limits.per_address:
            self._refuse(transport, "per_address")
            return
        self._address = address
        limits.open[address] += 1
        limits.watch(self)
        super().connection_made(transport)  # type: ignore[no-untyped-call]

    def _refuse(self, transport: Any, reason: str) -> None:
        CONNECTIONS_REFUSED.labels(reason).inc()
        self.transport = None
        transport.write(_BUSY)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        limits = self._limits
        if self in limits.live:
            limits.live.discard(self)
            limits.open[self._address] -= 1
            if limits.open[self._address] <= 0:
                del limits.open[self._address]
            super().connection_lost(exc)  # type: ignore[no-untyped-call]

    def data_received(self, data: bytes) -> None:
        if self._began is None:
            self._began = monotonic()  # the first byte of a request
        super().data_received(data)

    async def send(self, data: bytes) -> None:
        self._began = None  # an answer is going out: the request was received
        await super().send(data)  # type: ignore[no-untyped-call]

    def expire_before(self, late: float) -> None:
        """Close the connection if its request began before `late` and has not arrived."""
        began, http = self._began, self._http
        if began is None or began >= late or http is None:
            return
        # Still arriving: its headers, or (the handler waiting for it) its body. A handler
        # that is working on a request it has whole is never cut: slow answers may be fine.
        if http.stage in (Stage.IDLE, Stage.REQUEST) or (
            http.stage is Stage.HANDLER and http.request_body
        ):
            CONNECTIONS_REFUSED.labels("deadline").inc()
            self._began = None
            self.close()


def raise_descriptor_limit() -> int:
    """The soft limit on open descriptors raised to the hard one (a systemd unit starts at
    1,024); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
