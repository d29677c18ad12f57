"""Prometheus metrics, defined once; every process part records into these.

`analytics api` runs several worker processes: there prometheus-client's multiprocess mode is
on (`core.metric_files`, before this module is imported), every process writes its values to
files under `DATA_DIR/metrics`, and one scrape of any worker sums them. Each gauge says how
its per-process values combine (`multiprocess_mode`; ignored in a single process).
"""

from __future__ import annotations

import enum
import os
import time
from collections import deque

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)


class Drop(enum.StrEnum):
    """Every reason an event sent to us is filtered out (not stored, on purpose); the label of
    `tracking_events_dropped`. Filtering is not loss: it never raises the drop rate."""

    UNSUPPORTED_TYPE = "unsupported_type"  # 415: a content type other than JSON or text
    INVALID = "invalid"  # failed validation (the client got a 400 or a `rejected` entry)
    TOO_LARGE = "too_large"  # body or array over the limit (counted per request)
    RATE_LIMITED = "rate_limited"  # 429 (counted per request)
    DUPLICATE = "duplicate"  # eventId already accepted: acknowledged, not stored again
    OVERLOADED = "overloaded"  # 503: more rows wait to be stored than INGEST_MAX_PENDING_ROWS
    UNWRITABLE = "unwritable"  # 503: the tracking log could not take them (disk full or failing)


EVENTS_RECEIVED = Counter(
    "tracking_events_received", "Tracking events received, valid or not (per request when unparsed)"
)
EVENTS_ACCEPTED = Counter("tracking_events_accepted", "Tracking events answered with 202")
EVENTS_STORED = Counter("tracking_events_stored", "Tracking events confirmed stored in ClickHouse")
EVENTS_DROPPED = Counter(
    "tracking_events_dropped", "Tracking events not stored, by reason", ["reason"]
)
LONE_SURROGATES = Counter(
    "tracking_lone_surrogates_replaced",
    "Lone UTF-16 surrogate escapes (a string cut mid-emoji) replaced by U+FFFD in beacons",
)
BOT_EVENTS = Counter(
    "tracking_bot_events", "Events accepted and flagged is_bot = true (kept out of reports)"
)
BATCH_ROWS = Histogram(
    "tracking_batch_rows",
    "Rows per insert batch",
    buckets=(1, 10, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000),
)
FLUSH_SECONDS = Histogram(
    "tracking_flush_seconds",
    "Time to write one batch to ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
VISIBLE_SECONDS = Histogram(
    "tracking_visible_seconds",
    "From the 202 to the row being queryable, for the oldest row of each stored batch",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
INSERT_FAILURES = Counter(
    "clickhouse_insert_failures", "Batch inserts ClickHouse refused", ["table"]
)
CLICKHOUSE_RETRIES = Counter(
    "clickhouse_retries", "ClickHouse calls retried after a temporary failure", ["operation"]
)
RETRY_QUEUE_DEPTH = Gauge(
    "tracking_retry_queue_depth",
    "Batches in the Redis retry queue (read at scrape time)",
    multiprocess_mode="mostrecent",
)
UNPLACED_ROWS = Gauge(
    "tracking_log_unplaced_rows",
    "Accepted events in the tracking log not yet in ClickHouse or the retry queue",
    multiprocess_mode="livesum",
)
WRITER_STALLED = Counter(
    "tracking_writer_stalls",
    "Batches neither ClickHouse nor the retry queue took: the log kept them, tried again later",
)
LOG_DAMAGE = Counter(
    "tracking_log_damage",
    "Damage the tracking log's readers stepped over (torn tails, undecodable lines, a removed"
    " directory); nothing answered 202 is in a torn tail",
    ["reader", "kind"],
)
SIDE_EFFECT_FAILURES = Counter(
    "analytics_side_effect_failures",
    "Best-effort side effects (counters, caches, marks, gauges) that failed and were skipped,"
    " by operation and by what failed: redis, clickhouse, rabbitmq, timeout, os, other",
    ["operation", "dependency"],
)
REDIS_FAILURES = Counter(
    "redis_unavailable", "Redis calls that failed; ingest went on without them", ["operation"]
)
REDIS_EVICTED_KEYS = Gauge(
    "redis_evicted_keys",
    "Keys the Redis of this role evicted since it started (INFO evicted_keys, read at scrape)",
    ["redis"],
    multiprocess_mode="mostrecent",
)
REDIS_EVICTION_ALLOWED = Gauge(
    "redis_eviction_allowed",
    "1 when the Redis of this role may evict keys (its maxmemory-policy is not noeviction)",
    ["redis"],
    multiprocess_mode="mostrecent",
)
REDIS_MEMORY_USED_RATIO = Gauge(
    "redis_memory_used_ratio",
    "used_memory over maxmemory of the Redis of this role (0 without a maxmemory)",
    ["redis"],
    multiprocess_mode="mostrecent",
)
CONNECTIONS_REFUSED = Counter(
    "http_connections_refused",
    "Connections answered 503 and closed past a cap (total, per_address), or closed when a"
    " request did not arrive whole in time (deadline)",
    ["reason"],
)
RATE_LIMIT_FAIL_OPEN = Counter(
    "rate_limit_fail_open", "Requests let through because Redis could not be asked"
)
PUBLISHED = Counter("analytics_events_published", "Messages confirmed by RabbitMQ", ["routing_key"])
PUBLISH_FAILURES = Counter(
    "analytics_publish_failures", "Publish attempts that failed and were put back", ["routing_key"]
)
PUBLISH_BACKLOG = Gauge(
    "analytics_publish_backlog", "Messages waiting to be published", multiprocess_mode="livesum"
)
PUBLISH_LOST = Counter(
    "analytics_publish_lost", "Messages discarded because the backlog was full", ["routing_key"]
)
DOMAIN_RECEIVED = Counter("domain_events_received", "Domain event messages taken from RabbitMQ")
DOMAIN_STORED = Counter("domain_events_stored", "Domain events stored", ["event_type"])
DOMAIN_DUPLICATES = Counter(
    "domain_events_duplicates", "Redelivered or republished domain events not stored again"
)
DOMAIN_DEAD_LETTERED = Counter(
    "domain_events_dead_lettered", "Messages sent to the dead-letter queue", ["routing_key"]
)
AMOUNTS_ROUNDED = Counter(
    "analytics_amounts_rounded",
    "Domain-event amounts with more than six decimal places (a float's noise, 0.1 + 0.2),"
    " rounded half-even to the column's scale and stored",
)
DOMAIN_REFUSED = Counter(
    "domain_events_refused",
    "Messages ClickHouse refused for their data, isolated from their batch and dead-lettered",
    ["routing_key"],
)
CONSUMER_RESTARTS = Counter(
    "domain_consumer_restarts", "Times the consume loop failed and was restarted by its supervisor"
)
RESTARTS = Counter(
    "component_restarts",
    "Background parts restarted after a failure (publisher reconnects, the embedded worker)",
    ["component"],
)
# The consumer runs in `analytics serve` or `analytics consume`, one process each.
CONSUMER_UP = Gauge("domain_consumer_up", "1 while the consume loop runs and is connected")
CONSUMER_UNACKED = Gauge(
    "domain_consumer_unacked_messages", "Messages taken from RabbitMQ and not yet acked"
)
CONSUMER_LAG = Gauge(
    "domain_consumer_oldest_unacked_seconds",
    "Age of the oldest message taken and not yet stored or dead-lettered (consumer lag)",
)
LATE_RECOMPUTES = Counter(
    "domain_late_recomputes",
    "Recomputes enqueued because events arrived for a period already computed",
    ["task"],
)
DOMAIN_BATCH_SECONDS = Histogram(
    "domain_events_batch_seconds",
    "From taking a batch to acking it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DASHBOARD_SNAPSHOT_AGE = Gauge(
    "dashboard_snapshot_age_minutes",
    "Minutes since the scheduled rebuild's newest snapshot, or since installation when it has"
    " never written one (dashboard_snapshot_never_rebuilt)",
    multiprocess_mode="mostrecent",
)
DASHBOARD_NEVER_REBUILT = Gauge(
    "dashboard_snapshot_never_rebuilt",
    "1 while the scheduled rebuild has never written a snapshot",
    multiprocess_mode="mostrecent",
)
AGGREGATION_JOB_DURATION = Histogram(
    "aggregation_job_duration_ms",
    "Duration of the aggregation jobs (recompute-funnels, rebuild-dashboards)",
    ["task"],  # not `job`: Prometheus gives every scraped series a `job` label of its own
    buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
)
EXPORT_DURATION = Histogram(
    "export_generation_duration_ms",
    "Time to generate one report export",
    buckets=(50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000),
)
ARCHIVE_DAYS_BEHIND = Gauge(
    "archive_days_behind",
    "Days of raw events old enough to archive (80 days) not yet in the verified archive, as the"
    " last archive or purge run saw them; such days stay in ClickHouse",
    multiprocess_mode="mostrecent",
)
ARCHIVE_FAILURES = Counter(
    "archive_failures", "Days an archive run could not write or verify (kept hot, tried again)"
)
EXPORT_FAILURES = Counter("export_failures", "Report exports that ended FAILED")
INGEST_RATE = Gauge(
    "tracking_ingest_rate_per_second",
    "Events accepted per second over the last minute (all workers of the process together)",
    multiprocess_mode="livesum",
)
DROP_RATE = Gauge(
    "analytics_event_drop_rate",
    "Loss over the last minute (0..1): accepted events, or their event.tracked messages,"
    " lost (analytics_events_lost_total) over events accepted; the worst worker's",
    multiprocess_mode="livemax",
)
EVENTS_LOST = Counter(
    "analytics_events_lost",
    "Accepted events, or their messages, lost: publish_lost (event.tracked backlog full)",
    ["reason"],
)


class RateWindow:
    """Per-second rates over a trailing window, for the two seed gauges."""

    def __init__(self, seconds: int = 60) -> None:
        self._seconds = seconds
        self._buckets: deque[tuple[int, int, int]] = deque()  # (second, accepted, lost)

    def record(self, accepted: int = 0, lost: int = 0) -> None:
        now = int(time.monotonic())
        if self._buckets and self._buckets[-1][0] == now:
            _, a, d = self._buckets[-1]
            self._buckets[-1] = (now, a + accepted, d + lost)
        else:
            self._buckets.append((now, accepted, lost))
        self._trim(now)

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._seconds:
            self._buckets.popleft()

    def refresh_gauges(self) -> None:
        self._trim(int(time.monotonic()))
        accepted = sum(a for _, a, _ in self._buckets)
        lost = sum(d for _, _, d in self._buckets)
        INGEST_RATE.set(accepted / self._seconds)
        DROP_RATE.set(min(1.0, lost / accepted) if accepted else (1.0 if lost else 0.0))


RATES = RateWindow()


def drop(reason: Drop, count: int = 1) -> None:
    """Events filtered out on purpose: counted by reason, not loss."""
    EVENTS_DROPPED.labels(reason.value).inc(count)


def lose(reason: str, count: int = 1) -> None:
    """Accepted events (or their messages) lost: counted, and the drop rate rises."""
    EVENTS_LOST.labels(reason).inc(count)
    RATES.record(lost=count)


def is_multiprocess() -> bool:
    return values.ValueClass is not values.MutexValue


def exposition() -> bytes:
    """The Prometheus text of this process, or of every worker summed in multiprocess mode."""
    if not is_multiprocess():
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_exiting() -> None:
    """A worker stopping: its `live*` gauges leave the sums."""
    if is_multiprocess():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
