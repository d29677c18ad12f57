"""RabbitMQ connection helpers shared by the consumer, the publisher and health checks."""

from __future__ import annotations

import asyncio

import aio_pika


async def ping(url: str, within: float = 2.0) -> bool:
    """True when a connection to the broker can be opened now."""
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=within)
    except (Exception, TimeoutError):
        return False
    await connection.close()
    return True
