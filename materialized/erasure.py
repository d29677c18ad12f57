"""Erasure of a user's data on request (UK GDPR Art. 17): `POST /v1/analytics/erasures`,
`analytics erase USER_ID`, run by the `erase_user` job.

What goes: the user's rows and every row of the sessions they were signed in on (a session
seen with their userId on any event, in ClickHouse or in an archived day), and their domain
events (`customerId`). How, table by table (docs/privacy.md has the table):
- deleted by key (lightweight DELETE; counted first): `tracking_events` and
  `tracking_events_restored` (user or session), `analytics_events` (customer),
  `stats_sessions`, `stats_visits`, `stats_pages`, `stats_session_journeys`, `visitor_events`
  (session or visitor), `customer_orders_hourly`, `customer_first_order` (customer);
- rebuilt for the hours their rows fell in (materialized/rollup_rebuild.py): the hourly counts
  `tracking_events_hourly`, `blog_views_hourly`, `product_views_hourly`, `stats_hourly` (and
  the days of `stats_daily` holding those hours) from the raw rows that remain, or, for days
  already purged from ClickHouse, from their rewritten archive; `domain_events_hourly` from
  the remaining domain events;
- rewritten: every archived day holding their rows (materialized/archive_rewrite.py);
- touched: the start hours of their sessions (`stats_session_touches`), so that no sealed
  hour still counting them is read (materialized/session_hours.py) until it is sealed again;
- Redis: their visitor key, their sessions' keys, the rows of theirs the retry queue
  dead-lettered; the stats and dashboard caches are dropped and the live counters of the
  days their domain events fell on marked for reconciling.
Aggregates that never held a user's identity stay as they are: computed funnels (`funnels`),
dashboard snapshots (the hourly rebuild recomputes them) and the archive log.

An erasure is a sequence of steps, each idempotent and recorded in `erasures` when done, so a
run cut short (a crash, storage down) resumes where it stopped. A pass ends by counting what
is left of the user: rows stored meanwhile (traffic flows on) start another pass; an hour
still being written is rebuilt once it has ended (SETTLE after it), the job waiting for it;
rows of theirs queued for retry make it wait until they are stored. After MAX_PASSES passes
that still find new rows it fails, saying it must run again. The audit keeps who asked, when,
and what each table lost, with the user id only as an HMAC-SHA256 under ERASURE_AUDIT_KEY.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import msgspec
from redis.asyncio import Redis

from core import keys
from core.clickhouse import Warehouse
from core.storage import Storage
from materialized import archive, counters, dashboard_cache, rollup_rebuild
from materialized.archive_rewrite import rewrite_day, sessions_in

MAX_PASSES = 5
SETTLE = timedelta(minutes=2)  # after an hour ends, before its rows are taken as complete
_SESSIONS = "session_id IN (SELECT arrayJoin({sessions:Array(UUID)}))"
_USER_OR_SESSIONS = f"(user_id = {{user:UUID}} OR {_SESSIONS})"
_VISITOR_OR_SESSIONS = f"(visitor = {{user:UUID}} OR {_SESSIONS})"
# Tables a user's rows are deleted from by key, with the condition.
KEYED: dict[str, str] = {
    "tracking_events": _USER_OR_SESSIONS,
    "tracking_events_restored": _USER_OR_SESSIONS,
    "visitor_events": _VISITOR_OR_SESSIONS,
    "analytics_events": "customer_id = {user:UUID}",
    "stats_sessions": _SESSIONS,
    "stats_visits": _VISITOR_OR_SESSIONS,
    "stats_pages": _VISITOR_OR_SESSIONS,
    "stats_session_journeys": _VISITOR_OR_SESSIONS,
    "customer_orders_hourly": "customer_id = {user:UUID}",
    "customer_first_order": "customer_id = {user:UUID}",
}


# Views over the users' rows that keep nothing of them but hours and times: left as they are
# (an erasure adds its own touches, see _pass).
UNIDENTIFIED_VIEWS = ("stats_session_touches_mv",)


class QueuedRows(Protocol):
    """The retry queue (tracked/retry_queue.py), as far as an erasure looks into it."""

    async def holds_any(self, ids: list[str]) -> bool: ...

    async def forget_refused(self, ids: list[str]) -> int: ...


class ErasureStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class Progress(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A running erasure's plan and the steps of the current pass that are done."""

    passes: int = 0
    sessions: list[uuid.UUID] = []
    hot_hours: list[datetime] = []  # hours of raw rows removed, to rebuild from the rest
    # The start hours of the sessions removed: touched once they are, so no seal counts them.
    session_hours: list[datetime] = []
    domain_hours: list[datetime] = []
    archived_days: list[date] = []  # archived days holding the user's rows, to rewrite
    purged_days: list[date] = []  # of those, the days no longer in tracking_events
    done: list[str] = []
    waiting_for: datetime | None = None  # the hour to end, or the retry queue to drain


class Record(msgspec.Struct, kw_only=True):
    erasure_id: uuid.UUID
    user_hash: str
    requested_by: str
    requested_at: datetime
    status: ErasureStatus = ErasureStatus.QUEUED
    started_at: datetime | None = None
    finished_at: datetime | None = None
    removed: dict[str, int] = {}
    progress: Progress = msgspec.field(default_factory=Progress)
    error: str = ""


class ErasureAnswer(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    erasure_id: str
    status: ErasureStatus
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    removed: dict[str, int] | None = None  # rows per table (`archive`: rows of archived days)
    error: str | None = None


def answer_of(record: Record) -> ErasureAnswer:
    return ErasureAnswer(
        erasure_id=str(record.erasure_id),
        status=record.status,
        requested_at=record.requested_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        removed=dict(record.removed) if record.status is not ErasureStatus.QUEUED else None,
        error=record.error or None,
    )


def user_hash(key: bytes, user: uuid.UUID) -> str:
    return hmac.new(key, user.bytes, hashlib.sha256).hexdigest()


_progress = msgspec.json.Decoder(Progress)


class ErasureStore:
    """The `erasures` table (sql/0026): one row per change, the latest read with FINAL."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    async def save(self, record: Record) -> None:
        await self.warehouse.command(
            "INSERT INTO erasures (erasure_id, user_hash, requested_by, requested_at, status,"
            " started_at, finished_at, removed, progress, error, version) VALUES ("
            "{id:UUID}, {hash:String}, {by:String}, {at:DateTime64(3, 'UTC')}, {status:String},"
            " {started:Nullable(DateTime64(3, 'UTC'))}, {finished:Nullable(DateTime64(3, 'UTC'))},"
            " mapFromArrays({tables:Array(String)}, {rows:Array(UInt64)}), {progress:String},"
            " {error:String}, {version:UInt64})",
            {
                "id": record.erasure_id,
                "hash": record.user_hash,
                "by": record.requested_by,
                "at": record.requested_at,
                "status": record.status.value,
                "started": record.started_at,
                "finished": record.finished_at,
                "tables": list(record.removed),
                "rows": list(record.removed.values()),
                "progress": msgspec.json.encode(record.progress).decode(),
                "error": record.error,
                "version": time.time_ns(),
            },
        )

    async def _select(self, where: str, parameters: dict[str, Any]) -> list[Record]:
        rows = await self.warehouse.rows(
            "SELECT erasure_id, user_hash, requested_by, requested_at, status, started_at,"
            f" finished_at, removed, progress, error FROM erasures FINAL WHERE {where}"
            " ORDER BY requested_at DESC",
            parameters,
        )
        return [
            Record(
                erasure_id=row[0],
                user_hash=row[1],
                requested_by=row[2],
                requested_at=row[3],
                status=ErasureStatus(row[4]),
                started_at=row[5],
                finished_at=row[6],
                removed={str(k): int(v) for k, v in row[7].items()},
                progress=_progress.decode(row[8]),
                error=row[9],
            )
            for row in rows
        ]

    async def get(self, erasure_id: uuid.UUID) -> Record | None:
        found = await self._select("erasure_id = {id:UUID}", {"id": erasure_id})
        return found[0] if found else None

    async def unfinished(self, hashed: str) -> Record | None:
        """The user's erasure still queued or running, if any: asking again resumes it."""
        found = await self._select(
            "user_hash = {hash:String} AND status IN ('QUEUED', 'RUNNING')", {"hash": hashed}
        )
        return found[0] if found else None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _hour_ended(hour: datetime, now: datetime) -> bool:
    return hour + timedelta(hours=1) + SETTLE <= now


class Erasure:
    """One run of an erasure over the clients it needs; `run` takes it as far as it can go."""

    def __init__(
        self,
        warehouse: Warehouse,
        storage: Storage | None,
        redis: Redis,
        queued: QueuedRows,
        zone: zoneinfo.ZoneInfo,
        record: Record,
        user: uuid.UUID,
    ) -> None:
        self.warehouse, self.storage, self.redis, self.zone = warehouse, storage, redis, zone
        self.queued = queued
        self.record, self.user = record, user
        self.store = ErasureStore(warehouse)

    @property
    def _parameters(self) -> dict[str, Any]:
        return {"user": self.user, "sessions": self.record.progress.sessions}

    def _step(self, name: str) -> bool:
        """Whether step `name` of this pass is still to do."""
        return name not in self.record.progress.done

    async def _did(self, name: str, removed: dict[str, int] | None = None) -> None:
        for table, n in (removed or {}).items():
            self.record.removed[table] = self.record.removed.get(table, 0) + n
        self.record.progress.done.append(name)
        await self.store.save(self.record)

    async def run(self, now: datetime) -> datetime | None:
        """Erase as far as possible now; the time to run again (an hour to end, the retry
        queue to drain), or None when done or failed (the record says which)."""
        record = self.record
        if record.status is ErasureStatus.QUEUED:
            record.status, record.started_at = ErasureStatus.RUNNING, now
            await self.store.save(record)
        while record.progress.passes < MAX_PASSES:
            wait = await self._pass(now)
            if wait is not None:
                record.progress.waiting_for = wait
                await self.store.save(record)
                return wait
            if not await self._left():
                record.status, record.finished_at = ErasureStatus.DONE, datetime.now(UTC)
                record.progress = Progress(passes=record.progress.passes + 1)
                await self.store.save(record)
                return None
            # Rows of the user stored during this pass: plan and erase again.
            record.progress = Progress(
                passes=record.progress.passes + 1, sessions=record.progress.sessions
            )
            await self.store.save(record)
        record.status, record.finished_at = ErasureStatus.FAILED, datetime.now(UTC)
        record.error = (
            f"the user's rows kept arriving through {MAX_PASSES} passes: run the erasure again"
        )
        await self.store.save(record)
        return None

    async def _pass(self, now: datetime) -> datetime | None:
        if self._step("plan"):
            await self._plan()
            await self._did("plan")
        if self._step("redis"):
            await self._did("redis", await self._forget_in_redis())
        for table, condition in KEYED.items():
            if self._step(f"delete:{table}"):
                n = await self.warehouse.scalar(
                    f"SELECT count() FROM {table} WHERE {condition}", self._parameters
                )
                if n:
                    await self.warehouse.delete_where(table, condition, self._parameters)
                await self._did(f"delete:{table}", {table: int(n)})
        if self._step("archive"):
            await self._did("archive", {"archive": await self._rewrite_archive()})
        progress = self.record.progress
        pending = [h for h in progress.hot_hours if not _hour_ended(h, now)]
        if self._step("rebuild"):
            ended = [h for h in progress.hot_hours if _hour_ended(h, now)]
            await rollup_rebuild.rebuild(self.warehouse, rollup_rebuild.TRACKING_ROLLUPS, ended)
            await rollup_rebuild.rebuild(
                self.warehouse, rollup_rebuild.DOMAIN_ROLLUPS, progress.domain_hours
            )
            await self._rebuild_purged()
            await self.warehouse.command(
                "INSERT INTO stats_session_touches (start_hour, touched_at)"
                " SETTINGS insert_deduplicate = 0"
                " SELECT arrayJoin({hours:Array(DateTime('UTC'))}), now64(3, 'UTC')",
                {"hours": progress.session_hours},
            )
            # The hours still being written wait for the next run (this pass stays open).
            progress.hot_hours = pending
            await self._did("rebuild")
        if pending:
            progress.done.remove("rebuild")
            return max(pending) + timedelta(hours=1) + SETTLE
        if self._step("caches"):
            await self._drop_caches()
            await self._did("caches")
        ids = [str(self.user), *map(str, progress.sessions)]
        if await self.queued.holds_any(ids):
            progress.done.clear()  # erase again once the queued rows are stored
            return now + timedelta(minutes=1)
        return None

    async def _plan(self) -> None:
        """The user's sessions (hot, restored or archived), the hours their rows fell in, and
        the archived days holding them."""
        progress = self.record.progress
        sessions = set(progress.sessions)
        for table in ("tracking_events", "tracking_events_restored"):
            rows = await self.warehouse.rows(
                f"SELECT DISTINCT session_id FROM {table} WHERE user_id = {{user:UUID}}",
                {"user": self.user},
            )
            sessions |= {r[0] for r in rows}
        logged = await archive.logged(self.warehouse)
        hot_days = {
            r[0]
            for r in await self.warehouse.rows(
                "SELECT DISTINCT toDate(received_at) FROM tracking_events"
                " WHERE has({days:Array(Date)}, toDate(received_at))",
                {"days": sorted(logged)},
            )
        }
        purged = sorted(set(logged) - hot_days)
        if self.storage is not None:
            for day in purged:
                sessions |= sessions_in(await self.storage.read(archive.object_key(day)), self.user)
        progress.sessions = sorted(sessions, key=str)
        hours = await self.warehouse.rows(
            "SELECT DISTINCT toStartOfHour(received_at) FROM tracking_events"
            f" WHERE {_USER_OR_SESSIONS}",
            self._parameters,
        )
        progress.hot_hours = sorted({*progress.hot_hours, *(_utc(r[0]) for r in hours)})
        started = await self.warehouse.rows(
            f"SELECT DISTINCT start_hour FROM stats_sessions WHERE {_SESSIONS}", self._parameters
        )
        progress.session_hours = sorted({*progress.session_hours, *(_utc(r[0]) for r in started)})
        domain = await self.warehouse.rows(
            "SELECT DISTINCT toStartOfHour(occurred_at) FROM analytics_events"
            " WHERE customer_id = {user:UUID}",
            {"user": self.user},
        )
        progress.domain_hours = sorted(_utc(r[0]) for r in domain)
        touched = {h.date() for h in progress.hot_hours}
        progress.archived_days = sorted(d for d in logged if d in touched or d in purged)
        progress.purged_days = [d for d in progress.archived_days if d in purged]

    async def _forget_in_redis(self) -> dict[str, int]:
        progress = self.record.progress
        names = [keys.visitor(self.user.bytes), *(keys.session(s.bytes) for s in progress.sessions)]
        gone = 0
        for at in range(0, len(names), 500):
            gone += int(await self.redis.delete(*names[at : at + 500]))
        refused = await self.queued.forget_refused([str(self.user), *map(str, progress.sessions)])
        return {"redis": gone + refused}

    async def _rewrite_archive(self) -> int:
        progress = self.record.progress
        if not progress.archived_days:
            return 0
        if self.storage is None:
            raise RuntimeError("archived days hold the user's rows, and no storage is open")
        logged = await archive.logged(self.warehouse)
        removed = 0
        for day in progress.archived_days:
            done = await rewrite_day(
                self.warehouse,
                self.storage,
                day,
                self.user,
                set(progress.sessions),
                f"erasure-{self.record.erasure_id}",
                logged,
            )
            removed += done.removed
        return removed

    async def _rebuild_purged(self) -> None:
        """The rollup hours of archived days no longer in ClickHouse, from their rewritten
        objects loaded into a scratch table (the views do not read it)."""
        progress = self.record.progress
        if not progress.purged_days or self.storage is None:
            return
        scratch = f"erasure_replay_{self.record.erasure_id.hex}"
        await self.warehouse.command(f"DROP TABLE IF EXISTS {scratch}")
        await self.warehouse.command(
            f"CREATE TABLE {scratch} AS tracking_events_restored"
            " ENGINE = MergeTree ORDER BY tuple()"
        )
        try:
            for day in progress.purged_days:
                await archive.load_into(self.warehouse, self.storage, day, scratch)
            hours = [
                r[0]
                for r in await self.warehouse.rows(
                    f"SELECT DISTINCT toStartOfHour(received_at) FROM {scratch}"
                )
            ]
            await rollup_rebuild.rebuild(
                self.warehouse, rollup_rebuild.TRACKING_ROLLUPS, hours, replay_from=scratch
            )
        finally:
            await self.warehouse.command(f"DROP TABLE IF EXISTS {scratch}")

    async def _drop_caches(self) -> None:
        cursor = 0
        while True:
            cursor, found = await self.redis.scan(cursor, match=keys.stats_cache("*"), count=1000)
            if found:
                await self.redis.delete(*found)
            if not cursor:
                break
        await dashboard_cache.invalidate(self.redis)
        days = {h.astimezone(self.zone).date() for h in self.record.progress.domain_hours}
        await counters.mark_stale(self.redis, days)

    async def _left(self) -> int:
        """Rows of the user still stored (arrived since this pass planned). visitor_events is
        derived from tracking_events but written apart (its backfill reads a snapshot), and
        so is stats_session_journeys (a seal that read the raw events before this pass deleted
        them may write after it), so a row of theirs left there starts another pass too."""
        left = 0
        for table in (
            "tracking_events",
            "analytics_events",
            "visitor_events",
            "stats_session_journeys",
        ):
            left += int(
                await self.warehouse.scalar(
                    f"SELECT count() FROM {table} WHERE {KEYED[table]}", self._parameters
                )
            )
        return left
