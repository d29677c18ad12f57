"""A publish-only AMQP 0-9-1 connection with publisher confirms, for the `event.tracked` relay.

aiormq builds every publish through pamqp objects, a future and a task: about 110 µs of CPU per
message here (bench/publish_cost.py), which capped the relay near 8,000 messages/s on a core of
its own. The relay sends one kind of message only (one exchange, one routing key, three
properties), so this writes the frames itself: the method frame is the same bytes for every
message, the content header differs in the body size and message id, and a whole chunk goes out
in one write. Confirms are read as they come (RabbitMQ acks many tags at once) and a chunk
returns when its last delivery tag is acked.

The handshake, the exchange declaration and every frame the broker sends are (un)marshalled by
pamqp, the library aiormq itself uses; only the publish path is hand-encoded (its bytes are
checked against pamqp's in tests/test_relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, header, heartbeat
from pamqp.base import Frame

FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_CHANNEL = 1
_BASIC = 60
# Property flags, AMQP 0-9-1 §4.2.6.1: content-type (bit 15), delivery-mode (12), message-id (7).
_FLAGS = (1 << 15) | (1 << 12) | (1 << 7)
_PERSISTENT = 2
_HEARTBEAT_S = 60
CONNECT_TIMEOUT_S = 5
_JSON = b"application/json"
_READ_SIZE = 1 << 16
_SIZE = struct.Struct(">I")
_BASIC_ACK = struct.pack(">HH", _BASIC, 80)  # Basic.Ack's class and method ids
_ACK_ARGS = struct.Struct(">QB")  # delivery tag, then the `multiple` bit

F = TypeVar("F", bound=Frame)


class PublishError(ConnectionError):
    """The broker refused a message, closed the channel or the connection, or went silent."""


def publish_frame(exchange: str, routing_key: str) -> bytes:
    """The Basic.Publish method frame, the same for every message to this exchange and key."""
    return frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)


def encode_message(
    method: bytes, message_id: bytes, body: bytes, content_type: bytes, frame_max: int
) -> bytes:
    """One persistent message's frames: the given method frame, a content header (content type,
    delivery mode 2, message id) and the body in frames of at most `frame_max`."""
    properties = (
        bytes((len(content_type),))
        + content_type
        + bytes((_PERSISTENT, len(message_id)))
        + message_id
    )
    payload = struct.pack(">HHQH", _BASIC, 0, len(body), _FLAGS) + properties
    parts = [method, struct.pack(">BHI", _HEADER, _CHANNEL, len(payload)), payload, FRAME_END]
    room = frame_max - 8  # a frame's type, channel, size and end byte
    for at in range(0, len(body), room):
        piece = body[at : at + room]
        parts += (struct.pack(">BHI", _BODY, _CHANNEL, len(piece)), piece, FRAME_END)
    return b"".join(parts)


class ConfirmingPublisher:
    """One connection, one channel in confirm mode, one exchange and routing key."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exchange: str,
        routing_key: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._method = publish_frame(exchange, routing_key)
        self._frame_max = 131072
        self._heartbeat = 0
        self._published = 0  # delivery tags handed out (tags start at 1)
        self._confirmed = 0  # every tag up to this one is acked
        self._acked_ahead: set[int] = set()  # single acks past `_confirmed` (out of order)
        self._progress = asyncio.Event()
        self._failure: PublishError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def connect(cls, url: str, exchange: str, routing_key: str) -> ConfirmingPublisher:
        parts = urlsplit(url)
        secure = parts.scheme == "amqps"
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                parts.hostname or "localhost",
                parts.port or (5671 if secure else 5672),
                ssl=ssl.create_default_context() if secure else None,
            )
            publisher = cls(reader, writer, exchange, routing_key)
            try:
                await publisher._open(
                    unquote(parts.username or "guest"),
                    unquote(parts.password or "guest"),
                    unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
                    exchange,
                )
            except PublishError:
                writer.close()
                raise
            except (EOFError, ConnectionError) as error:  # RabbitMQ hangs up on a bad login
                writer.close()
                raise PublishError(
                    f"the broker closed the connection while opening it: {error!r}"
                ) from error
            except BaseException:
                writer.close()
                raise
        publisher._tasks = [
            asyncio.create_task(publisher._read_forever(), name="amqp-read"),
            asyncio.create_task(publisher._beat(), name="amqp-heartbeat"),
        ]
        return publisher

    async def _open(self, user: str, password: str, vhost: str, exchange: str) -> None:
        self._writer.write(frame.marshal(header.ProtocolHeader(), 0))
        start = await self._expect(commands.Connection.Start)
        if b"PLAIN" not in start.mechanisms.encode().split():
            raise PublishError(f"the broker offers no PLAIN login: {start.mechanisms}")
        self._send(
            commands.Connection.StartOk(
                client_properties={"product": "lomash-analytics relay"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
            ),
            0,
        )
        tune = await self._expect(commands.Connection.Tune)
        self._frame_max = tune.frame_max or self._frame_max
        self._heartbeat = min(tune.heartbeat, _HEARTBEAT_S) if tune.heartbeat else 0
        self._send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=self._frame_max, heartbeat=self._heartbeat
            ),
            0,
        )
        self._send(commands.Connection.Open(virtual_host=vhost), 0)
        await self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open(), _CHANNEL)
        await self._expect(commands.Channel.OpenOk)
        self._send(
            commands.Exchange.Declare(exchange=exchange, exchange_type="topic", durable=True),
            _CHANNEL,
        )
        await self._expect(commands.Exchange.DeclareOk)
        self._send(commands.Confirm.Select(), _CHANNEL)
        await self._expect(commands.Confirm.SelectOk)

    def _send(self, value: Frame, channel: int) -> None:
        self._writer.write(frame.marshal(value, channel))

    async def _frame(self) -> Frame | heartbeat.Heartbeat | None:
        # The broker sends heartbeats at this interval: two missed ones mean it is gone.
        silence = self._heartbeat * 2 if self._heartbeat else None
        head = await asyncio.wait_for(self._reader.readexactly(7), silence)
        size = struct.unpack_from(">I", head, 3)[0]
        rest = await asyncio.wait_for(self._reader.readexactly(size + 1), silence)
        _, _, value = frame.unmarshal(head + rest)
        if isinstance(value, commands.Connection.Close | commands.Channel.Close):
            raise PublishError(f"the broker closed: {value.reply_code} {value.reply_text}")
        return value if isinstance(value, Frame | heartbeat.Heartbeat) else None

    async def _expect(self, kind: type[F]) -> F:
        while True:
            value = await self._frame()
            if isinstance(value, kind):
                return value
            if not isinstance(value, heartbeat.Heartbeat):
                raise PublishError(f"expected {kind.name}, the broker sent {value!r}")

    async def _read_forever(self) -> None:
        # Whatever the socket holds is read at once and every whole frame in it handled: one
        # wake-up per burst of confirms, not two timed reads per frame.
        silence = self._heartbeat * 2 if self._heartbeat else None
        pending = b""
        try:
            while True:
                chunk = await asyncio.wait_for(self._reader.read(_READ_SIZE), silence)
                if not chunk:
                    raise EOFError("the broker closed the socket")
                pending = self._handle_frames(pending + chunk if pending else chunk)
                self._progress.set()
        except PublishError as error:
            self._fail(error)
        except (OSError, EOFError, TimeoutError) as error:  # EOF: the socket closed
            self._fail(PublishError(f"connection lost: {error!r}"))

    def _handle_frames(self, data: bytes) -> bytes:
        """Handle every whole frame in `data`; return the incomplete rest."""
        at, end = 0, len(data)
        while end - at >= 8:
            size = _SIZE.unpack_from(data, at + 3)[0]
            stop = at + 8 + size
            if stop > end:
                break
            if size == 13 and data[at] == _METHOD and data[at + 7 : at + 11] == _BASIC_ACK:
                tag, flags = _ACK_ARGS.unpack_from(data, at + 11)  # the common case, unparsed
                self._ack(tag, bool(flags & 1))
            else:
                _, _, value = frame.unmarshal(data[at:stop])
                if isinstance(value, commands.Connection.Close | commands.Channel.Close):
                    raise PublishError(f"the broker closed: {value.reply_code} {value.reply_text}")
                if isinstance(value, commands.Basic.Ack):
                    self._ack(value.delivery_tag, value.multiple)
                elif isinstance(value, commands.Basic.Nack):
                    raise PublishError(f"the broker refused delivery tag {value.delivery_tag}")
            at = stop
        return data[at:]

    def _ack(self, tag: int, multiple: bool) -> None:
        # RabbitMQ may confirm out of order: a single ack covers its own tag only.
        if multiple:
            self._confirmed = max(self._confirmed, tag)
        else:
            self._acked_ahead.add(tag)
        while self._acked_ahead and self._confirmed + 1 in self._acked_ahead:
            self._confirmed += 1
            self._acked_ahead.discard(self._confirmed)
        if self._acked_ahead and min(self._acked_ahead) <= self._confirmed:
            self._acked_ahead = {t for t in self._acked_ahead if t > self._confirmed}

    def _fail(self, error: PublishError) -> None:
        self._failure = error
        self._progress.set()

    async def _beat(self) -> None:
        if not self._heartbeat:
            return
        beat = frame.marshal(heartbeat.Heartbeat(), 0)
        while True:
            await asyncio.sleep(self._heartbeat / 2)
            self._writer.write(beat)

    async def publish(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Send `(message id, body)` messages; return once the broker has confirmed them all,
        or raise PublishError (then none of them may be counted as sent)."""
        if self._failure is not None:
            raise self._failure
        if not messages:
            return
        method, frame_max = self._method, self._frame_max
        self._writer.write(
            b"".join(
                encode_message(method, message_id, body, _JSON, frame_max)
                for message_id, body in messages
            )
        )
        self._published += len(messages)
        last = self._published
        try:
            await self._writer.drain()
        except OSError as error:
            self._fail(PublishError(f"connection lost: {error!r}"))
        while self._confirmed < last:
            if self._failure is not None:
                raise self._failure
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            self._send(commands.Connection.Close(200, "relay stopping", 0, 0), 0)
        except OSError:
            pass  # the socket is gone already
        finally:
            self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2)
