"""The Redis steps of enrichment, run once per batch: drop duplicates, attach session data.

One script call per batch. Per session it keeps the first-seen time, landing page, entry
referrer and UTM tags and a counter that gives each event its sequence number; per known user,
the session they were first seen in, which makes every later session "returning". Every key
expires, and all of them live on the ephemeral Redis (CACHE_REDIS_URL): when one is evicted
the service degrades (a retried event may be stored twice, a session may restart its entry
page), it never refuses or loses an event.
When Redis is unreachable the batch is stored without session data and without the duplicate
check, and the failure is counted: stopping ingest would lose more than it protects.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import keys
from core.best_effort import warn_quietly
from core.limits import RAW_RETENTION_DAYS
from core.metrics import REDIS_FAILURES, Drop, drop
from tracked.row import TrackingRow

# An event id is remembered this long after its line is read: a client's retry of the same
# event comes within seconds (our tracker tries three times, a second apart), a server-side
# client's within minutes. Our tracker sets eventId on every event, so nearly all ids are
# client-chosen; server-made UUIDv7s cannot collide but cost only a key each.
DEDUP_TTL_S = 600
# A session ends after 30 minutes without an event: the tracker then starts a new sessionId
# (SESSION_IDLE_MINUTES in tracker.js). Its state is kept 15 minutes longer, so an event
# that reaches the writer late still finds its session.
SESSION_IDLE_S = 1800
SESSION_TTL_S = SESSION_IDLE_S + 900
# A known user is "returning" when seen in another session within this time: the raw events'
# hot retention, the longest stretch any report over them can look back on.
VISITOR_TTL_S = RAW_RETENTION_DAYS * 86400
# Landing page, referrer and UTM values a session keeps: what the reports show, bounded, so
# that a client inventing sessions cannot fill Redis with long URLs.
SESSION_VALUE_CHARS = 256

# KEYS: n event-id keys, then m session keys, then m visitor keys (a group without a user
# has its session key there too, unused). ARGV: ttls, the batch's owner id, n; n group
# numbers; m; m groups as (session, has user, first-seen ms, landing url, referrer, utm source,
# medium, campaign). Each event id is claimed for its place in the log, `claim_of(owner,
# index)`: the same line read again (a batch replayed after a crash) finds its own claim and is
# no duplicate; any other line with that id is one. A claim is an integer below 2^52 (exact
# in Lua's doubles), which Redis keeps inside the key's object: it costs no more than "1".
# A session is one string, a MessagePack array of (last sequence number, first-seen ms, landing,
# referrer, utm source, medium, campaign): a hash would leave its compact encoding at the
# first value over 64 bytes (most landing pages), costing twice the bytes.
# Returns per row 1 when it is a duplicate, and per group its session data with the last
# sequence number handed out before this batch.
_SCRIPT = """
local dedup_ttl, session_ttl, visitor_ttl = ARGV[1], ARGV[2], ARGV[3]
local base = tonumber(ARGV[4]) * 1048576
local n = tonumber(ARGV[5])
local duplicates, counts = {}, {}
for k = 1, n do
  local group = tonumber(ARGV[5 + k])
  local claim = string.format('%.0f', base + k)
  duplicates[k] = 0
  if redis.call('SET', KEYS[k], claim, 'NX', 'EX', dedup_ttl)
     or redis.call('GET', KEYS[k]) == claim then
    counts[group] = (counts[group] or 0) + 1
  else
    duplicates[k] = 1
  end
end
local i = 6 + n
local m = tonumber(ARGV[i]); i = i + 1
local sessions = {}
for g = 1, m do
  local sid, has_user = ARGV[i], ARGV[i + 1]
  local key, visitor = KEYS[n + g], KEYS[n + m + g]
  local packed = redis.call('GET', key)
  local s
  if packed then
    s = cmsgpack.unpack(packed)
  else
    s = {0, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]}
  end
  local before = s[1]
  s[1] = before + (counts[g] or 0)
  redis.call('SET', key, cmsgpack.pack(s), 'EX', session_ttl)
  local returning = 0
  if has_user == '1' then
    local first_session = redis.call('GET', visitor)
    if not first_session then
      redis.call('SET', visitor, sid, 'EX', visitor_ttl)
    elseif first_session ~= sid then
      returning = 1
    end
  end
  sessions[g] = {before, s[2], s[3], s[4], s[5], s[6], s[7], returning}
  i = i + 8
end
return {duplicates, sessions}
"""


class _Session(NamedTuple):
    seq_before: int
    started: datetime
    landing: str
    referrer: str
    utm: tuple[str, str, str]
    returning: bool

    @classmethod
    def from_redis(cls, answer: list[Any]) -> _Session:
        before, first_ms, landing, referrer, us, um, uc, returning = answer
        return cls(
            int(before),
            datetime.fromtimestamp(int(first_ms) / 1000, UTC),
            landing.decode(),
            referrer.decode(),
            (us.decode(), um.decode(), uc.decode()),
            bool(returning),
        )


def _utm(url: str) -> tuple[str, str, str]:
    query = parse_qs(urlsplit(url).query)

    def first(name: str) -> str:
        return query.get(name, [""])[0][:SESSION_VALUE_CHARS]

    return first("utm_source"), first("utm_medium"), first("utm_campaign")


def claim_of(owner: int, index: int) -> int:
    """The claim on an event id of the `index`-th row (from 1) of batch `owner`."""
    return owner * 1048576 + index


class SessionStore:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_SCRIPT)

    async def enrich(self, rows: list[TrackingRow], owner: int) -> list[TrackingRow]:
        """The rows minus those whose eventId another line of the log claimed, with their
        session data. `owner`: the batch's id (32 bits), the same whenever it is read."""
        groups: dict[tuple[uuid.UUID, uuid.UUID | None], int] = {}
        row_group: list[int] = []
        group_first: list[TrackingRow] = []
        for row in rows:
            key = (row.session_id, row.user_id)
            if key not in groups:
                groups[key] = len(groups) + 1  # Lua tables count from 1
                group_first.append(row)
            row_group.append(groups[key])
        # Ids go to Redis as their 16 raw bytes: shorter keys, and no str() per event.
        script_keys = [keys.accepted_event(row.event_id.bytes) for row in rows]
        script_keys += [keys.session(session_id.bytes) for session_id, _ in groups]
        script_keys += [
            keys.visitor(user.bytes) if user else keys.session(session_id.bytes)
            for session_id, user in groups
        ]
        args: list[bytes | str | int] = [
            DEDUP_TTL_S,
            SESSION_TTL_S,
            VISITOR_TTL_S,
            owner,
            len(rows),
        ]
        args.extend(row_group)
        args.append(len(groups))
        for (session_id, user), first in zip(groups, group_first, strict=True):
            args.extend(
                (
                    session_id.bytes,
                    1 if user else 0,
                    int(first.received_at.timestamp() * 1000),
                    first.url[:SESSION_VALUE_CHARS],
                    first.referrer[:SESSION_VALUE_CHARS],
                    *_utm(first.url),
                )
            )
        try:
            duplicates, sessions = await self._script(keys=script_keys, args=args)
        except (RedisError, OSError) as error:
            REDIS_FAILURES.labels("session_enrichment").inc()
            warn_quietly(
                "session_enrichment",
                "session enrichment skipped for %d events: %s; counted in"
                " redis_unavailable_total{operation=session_enrichment}",
                len(rows),
                error,
            )
            return rows

        kept = [row for row, dup in zip(rows, duplicates, strict=True) if not dup]
        if len(kept) < len(rows):
            drop(Drop.DUPLICATE, len(rows) - len(kept))
        known = [_Session.from_redis(answer) for answer in sessions]
        seq = [session.seq_before for session in known]
        for row, group, dup in zip(rows, row_group, duplicates, strict=True):
            if dup:
                continue
            at = group - 1
            session = known[at]
            seq[at] += 1
            row.session_seq = seq[at]
            row.session_started_at = session.started
            row.landing_page = session.landing
            row.entry_referrer = session.referrer
            row.utm_source, row.utm_medium, row.utm_campaign = session.utm
            row.is_returning = session.returning
        return kept
