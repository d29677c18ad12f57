"""`/metrics`, `/healthz` and `/readyz` for the processes that serve no HTTP API of their own
(`analytics consume`, the arq worker), on `METRICS_PORT`.

A few lines of asyncio instead of a web framework: three GETs, no bodies. A request line and
headers past 8 KiB, or slower than 5 s, get the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST

from core.metrics import exposition

Readiness = Callable[[], Awaitable[dict[str, Any]]]  # {"ready": bool, ...details}
MAX_HEAD = 8192
READ_TIMEOUT_S = 5.0


def bearer_matches(header: str, token: str) -> bool:
    """`header` is `Bearer <token>`; compared in constant time."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class OpsServer:
    def __init__(self, host: str, port: int, readiness: Readiness, token: str = "") -> None:
        self._host, self._port = host, port
        self._readiness = readiness
        self._token = token
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            writer.write(await self._answer(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a client that sends no complete head in time gets nothing
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> bytes:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[0] != "GET":
            return _response("405 Method Not Allowed", b'{"error":"GET only"}', "application/json")
        path = parts[1].split("?", 1)[0]
        if path == "/healthz":
            return _response("200 OK", b'{"status":"ok"}', "application/json")
        if path == "/readyz":
            found = await self._readiness()
            status = "200 OK" if found["ready"] else "503 Service Unavailable"
            return _response(status, msgspec.json.encode(found), "application/json")
        if path == "/metrics":
            if self._token and not any(
                line.lower().startswith("authorization:")
                and bearer_matches(line.split(":", 1)[1], self._token)
                for line in header_lines
            ):
                return _response(
                    "401 Unauthorized", b'{"error":"bearer token required"}', "application/json"
                )
            return _response("200 OK", exposition(), CONTENT_TYPE_LATEST)
        return _response("404 Not Found", b'{"error":"not found"}', "application/json")
