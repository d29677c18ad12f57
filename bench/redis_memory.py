"""Redis memory of the session step: bytes per event and per session, and the steady state.

    python -m bench.redis_memory [--sessions 20000] [--rate 500] [--customers 100000]

Drives the real session step (`ingest.sessions.SessionStore.enrich`, one call per batch, as
the writer makes it) on a Redis of its own, with sessions of 5 events: half with short URLs,
half with the long ones real shops have (a landing page with UTM tags and a click id, a search
engine referrer), one session in ten signed in. Bytes are what Redis itself allocated
(`used_memory` before and after, allocator overhead included), split by kind of key by
deleting one kind at a time, not `MEMORY USAGE` (which leaves the overhead out).

The steady state multiplies each kind by how many live at once at `--rate` events/s, with the
lifetimes the code sets: event-id claims `rate * DEDUP_TTL_S`, sessions
`rate / 5 * (session length + SESSION_TTL_S)`, known users `--customers` (the signed-in users
seen within VISITOR_TTL_S: the customer base, not the traffic). Run it in an old checkout
(`git worktree add /tmp/base <rev>`, then `python /path/to/bench/redis_memory.py` from there)
for the figures before a change: it reads the lifetimes and the keys from the code it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingest import sessions
from ingest.sessions import SessionStore
from tracked.row import TrackingRow

EVENTS_PER_SESSION = 5
SESSION_SECONDS = 180  # first to last event of a 5-event session
SIGNED_IN_SHARE = 10  # one session in ten
BATCH_ROWS = 1000
SHORT_URL = "https://www.lomashwood.co.uk/kitchens"
SHORT_REFERRER = "https://www.google.com/"
LONG_URL = (
    "https://www.lomashwood.co.uk/kitchens/shaker/oak-sage-green?utm_source=newsletter"
    "&utm_medium=email&utm_campaign=autumn-sale-2026&gclid=Cj0KCQiA4NWrBhD-ARIsAFCKwWt"
    "Bq3m9xR2v7pZy4kT1sLw8eD6uHn0JfQa5cVbYgXiOoMrNlKjIhGfEdCbA"
)
LONG_REFERRER = (
    "https://www.google.com/search?q=shaker+kitchen+sage+green+oak&rlz=1C1GCEA_enGB1000GB1000"
    "&oq=shaker+kitchen&sourceid=chrome&ie=UTF-8"
)
BUDGET_MB = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[int]:
    """A Redis of this run's own (its used_memory is ours alone); yields its port."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            yield port
        finally:
            server.kill()
            server.wait()


@asynccontextmanager
async def private_redis() -> AsyncIterator[Redis]:
    with redis_server() as port:
        client = Redis(port=port)
        try:
            for _ in range(100):
                try:
                    await client.ping()
                    break
                except (OSError, RedisError):
                    await asyncio.sleep(0.05)
            yield client
        finally:
            await client.aclose()


def traffic(count: int) -> list[TrackingRow]:
    """`count` sessions of 5 events, interleaved as concurrent visitors' events arrive."""
    now = datetime.now(UTC)
    rows: list[TrackingRow] = []
    for n in range(count):
        session, long = uuid.uuid4(), n % 2 == 1
        user = uuid.uuid4() if n % SIGNED_IN_SHARE == 0 else None
        for k in range(EVENTS_PER_SESSION):
            at = now + timedelta(seconds=k * SESSION_SECONDS / (EVENTS_PER_SESSION - 1))
            rows.append(
                TrackingRow(
                    event_id=uuid.uuid4(),
                    event_type="PAGEVIEW",
                    session_id=session,
                    user_id=user,
                    received_at=at,
                    client_timestamp=at,
                    occurred_at=at,
                    url=LONG_URL if long else SHORT_URL,
                    referrer=(LONG_REFERRER if long else SHORT_REFERRER) if k == 0 else "",
                )
            )
    # Events of many sessions arrive together: deal them out in arrival order.
    rows.sort(key=lambda row: (row.received_at, row.session_id))
    return rows


async def used(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def delete_matching(redis: Redis, pattern: bytes) -> int:
    removed = 0
    async for key in redis.scan_iter(match=pattern, count=10_000):
        removed += await redis.unlink(key)
    return removed


async def measure(count: int) -> dict[str, tuple[int, int]]:
    """Per kind of key: (keys, bytes)."""
    async with private_redis() as redis:
        store = SessionStore(redis)
        rows = traffic(count)
        start = await used(redis)
        began = time.perf_counter()
        for owner, at in enumerate(range(0, len(rows), BATCH_ROWS), start=1):
            await store.enrich(rows[at : at + BATCH_ROWS], owner)
        elapsed = time.perf_counter() - began
        grown = await used(redis) - start
        print(f"session step: {len(rows):,} events in {elapsed:.2f} s; Redis grew {grown:,} bytes")
        kinds: dict[str, tuple[int, int]] = {}
        for kind, pattern in (("claim", b"lw:evt:*"), ("visitor", b"lw:visitor:*")):
            before = await used(redis)
            keys = await delete_matching(redis, pattern)
            kinds[kind] = (keys, before - await used(redis))
        before = await used(redis)
        keys = await delete_matching(redis, b"*")  # what is left: the sessions
        kinds["session"] = (keys, before - await used(redis))
        return kinds


def report(kinds: dict[str, tuple[int, int]], rate: float, customers: int) -> None:
    per = {kind: size / keys for kind, (keys, size) in kinds.items() if keys}
    claim, session = per["claim"], per["session"]
    visitor = per.get("visitor", 0.0)
    sessions_per_s = rate / EVENTS_PER_SESSION
    live_claims = rate * sessions.DEDUP_TTL_S
    live_sessions = sessions_per_s * (SESSION_SECONDS + sessions.SESSION_TTL_S)
    claims_mb = live_claims * claim / 1e6
    sessions_mb = live_sessions * session / 1e6
    visitors_mb = customers * visitor / 1e6
    total = claims_mb + sessions_mb + visitors_mb
    print(
        f"lifetimes: claim {sessions.DEDUP_TTL_S} s, session {sessions.SESSION_TTL_S} s after"
        f" its last event, known user {sessions.VISITOR_TTL_S // 86400} days"
    )
    print(f"bytes per event (its claim):          {claim:8,.0f}")
    print(f"bytes per session (half long URLs):   {session:8,.0f}")
    print(f"bytes per known user:                 {visitor:8,.0f}")
    per_session_all = session + EVENTS_PER_SESSION * claim + visitor / SIGNED_IN_SHARE
    print(f"bytes per new session, all its keys:  {per_session_all:8,.0f}")
    print(f"at {rate:,.0f} events/s sustained ({sessions_per_s:,.0f} sessions/s), steady state:")
    print(f"  claims    {live_claims:12,.0f} live  {claims_mb:8,.1f} MB")
    print(f"  sessions  {live_sessions:12,.0f} live  {sessions_mb:8,.1f} MB")
    print(f"  users     {customers:12,} live  {visitors_mb:8,.1f} MB")
    print(f"  total {total:,.1f} MB: {total / BUDGET_MB:.2f} of the {BUDGET_MB} MB budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--customers", type=int, default=100_000, help="signed-in users, 90 d")
    args = parser.parse_args()
    report(asyncio.run(measure(args.sessions)), args.rate, args.customers)


if __name__ == "__main__":
    main()
