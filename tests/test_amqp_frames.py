"""The relay's hand-encoded publisher against the real broker: the bytes are pamqp's, every
message arrives whole with its properties, and every way the broker or the connection can fail
raises PublishError instead of counting a message as sent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
from pamqp import body, commands, frame, header, heartbeat

from ingest.amqp_frames import ConfirmingPublisher, PublishError, encode_message, publish_frame
from tests.conftest import AMQP_URL, take

Listen = Callable[..., Awaitable[aio_pika.abc.AbstractQueue]]
KEY = "lomash.analytics.event.tracked"


@pytest.mark.parametrize("size", [0, 7, 120, 121, 1000])
def test_frames_are_the_bytes_pamqp_would_write(size: int) -> None:
    frame_max = 128  # small, so that bodies over 120 bytes are split as the protocol says
    payload = bytes(range(256)) * 4
    payload = payload[:size]
    method = publish_frame("lomash.events", KEY)
    properties = commands.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id="0190-id"
    )
    expected = method + frame.marshal(header.ContentHeader(0, size, properties), 1)
    for at in range(0, size, frame_max - 8):
        expected += frame.marshal(body.ContentBody(payload[at : at + frame_max - 8]), 1)
    assert encode_message(method, b"0190-id", payload, b"application/json", frame_max) == expected


async def test_messages_arrive_whole_with_their_properties(
    exchange_name: str, listen: Listen
) -> None:
    queue = await listen(KEY)
    publisher = await ConfirmingPublisher.connect(AMQP_URL, exchange_name, KEY)
    # 300 kB is larger than the broker's frame size: sent as several body frames.
    sent = [(str(uuid.uuid4()).encode(), b'{"n":%d}' % n) for n in range(600)]
    sent.append((str(uuid.uuid4()).encode(), b'{"big":"' + b"x" * 300_000 + b'"}'))
    try:
        await publisher.publish(sent[:200])
        await publisher.publish(sent[200:])
    finally:
        await publisher.close()
    got = await take(queue, len(sent))
    assert await queue.get(fail=False) is None
    assert [(m.message_id.encode(), m.body) for m in got if m.message_id] == sent
    assert {(m.content_type, m.delivery_mode) for m in got} == {
        ("application/json", aio_pika.DeliveryMode.PERSISTENT)
    }


async def test_a_wrong_password_or_vhost_is_a_publish_error(exchange_name: str) -> None:
    for url in (
        "amqp://guest:wrong@127.0.0.1:5672/",
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
    ):
        with pytest.raises(PublishError):
            await ConfirmingPublisher.connect(url, exchange_name, KEY)


async def test_an_exchange_of_another_type_is_refused_by_name(exchange_name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)
    with pytest.raises(PublishError, match="406"):
        await ConfirmingPublisher.connect(AMQP_URL, exchange_name, KEY)


@contextlib.asynccontextmanager
async def proxy_to_broker() -> AsyncIterator[tuple[str, Callable[[], None]]]:
    """A TCP proxy to the broker, and a function that cuts every connection through it."""
    pipes: list[asyncio.StreamWriter] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        pipes.extend((writer, up_writer))
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def cut() -> None:
        for pipe in pipes:
            pipe.transport.abort()

    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/", cut
    finally:
        cut()
        server.close()
        await server.wait_closed()


async def test_a_cut_connection_fails_the_publish_that_waits_and_every_later_one(
    exchange_name: str,
) -> None:
    async with proxy_to_broker() as (url, cut):
        publisher = await ConfirmingPublisher.connect(url, exchange_name, KEY)
        try:
            await publisher.publish([(b"id-0", b"{}")])
            messages = [(str(n).encode(), b"x" * 2000) for n in range(20_000)]
            waiting = asyncio.create_task(publisher.publish(messages))
            await asyncio.sleep(0)
            cut()
            with pytest.raises(PublishError, match="connection lost"):
                await asyncio.wait_for(waiting, 10)
            with pytest.raises(PublishError):
                await publisher.publish([(b"id-1", b"{}")])
        finally:
            await publisher.close()


async def test_out_of_order_single_acks_confirm_only_their_own_tags() -> None:
    publisher = ConfirmingPublisher(asyncio.StreamReader(), None, "x", KEY)  # type: ignore[arg-type]
    seen = []
    for tag, multiple in ((2, False), (3, False), (1, False), (5, True), (7, False), (6, True)):
        publisher._ack(tag, multiple)
        seen.append(publisher._confirmed)
    assert seen == [0, 0, 3, 5, 5, 7]


@pytest.mark.parametrize("cut", [1, 7, 8, 21, 1000])
async def test_confirms_are_read_whatever_the_socket_cuts_them_into(cut: int) -> None:
    reader = asyncio.StreamReader()
    publisher = ConfirmingPublisher(reader, None, "x", KEY)  # type: ignore[arg-type]
    task = asyncio.create_task(publisher._read_forever())
    stream = b"".join(
        [
            frame.marshal(commands.Basic.Ack(delivery_tag=1), 1),
            frame.marshal(heartbeat.Heartbeat(), 0),
            frame.marshal(commands.Basic.Ack(delivery_tag=3), 1),
            frame.marshal(commands.Basic.Ack(delivery_tag=2**40, multiple=True), 1),
            frame.marshal(commands.Basic.Ack(delivery_tag=2**40 + 1), 1),
            frame.marshal(commands.Basic.Ack(delivery_tag=2**40 + 2, multiple=False), 1),
        ]
    )
    for at in range(0, len(stream), cut):
        reader.feed_data(stream[at : at + cut])
        await asyncio.sleep(0)
    await confirmed_through(publisher, 2**40 + 2)
    assert not publisher._acked_ahead and publisher._failure is None
    # then the broker refuses one, and the reader stops with the reason
    reader.feed_data(frame.marshal(commands.Basic.Nack(delivery_tag=2**40 + 3), 1))
    await asyncio.wait_for(task, 2)
    assert isinstance(publisher._failure, PublishError)
    assert "refused delivery tag" in str(publisher._failure)


async def test_a_channel_closed_by_the_broker_fails_with_its_reason() -> None:
    reader = asyncio.StreamReader()
    publisher = ConfirmingPublisher(reader, None, "x", KEY)  # type: ignore[arg-type]
    task = asyncio.create_task(publisher._read_forever())
    reader.feed_data(
        frame.marshal(commands.Channel.Close(404, "NOT_FOUND - no exchange", 60, 40), 1)
    )
    await asyncio.wait_for(task, 2)
    assert "404 NOT_FOUND - no exchange" in str(publisher._failure)


async def confirmed_through(publisher: ConfirmingPublisher, tag: int) -> None:
    async with asyncio.timeout(2):
        while publisher._confirmed != tag:
            publisher._progress.clear()
            await publisher._progress.wait()
