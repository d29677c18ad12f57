-- 0028_stats_session_hours.sql
-- The sessions that started in each UTC hour, summed once the hour is sealed (the
-- seal_session_hours job, materialized/session_hours.py): how many, how many bounced, and a
-- mergeable median state of their durations (quantileBFloat16: durations cut to 8 significant
-- bits, at most 0.8% low). A month's overview merges 720 of these rows instead of every
-- session's. A version per seal; the latest counts.
CREATE TABLE IF NOT EXISTS stats_session_hours ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    sealed_at   DateTime64(3, 'UTC'),
    sessions    UInt64,
    bounces     UInt64,
    durations   AggregateFunction(quantileBFloat16(0.5), UInt64)
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
ORDER BY start_hour;

-- When rows last went into each start hour's sessions: the server's clock at each insert
-- into tracking_events (an erasure that removes sessions adds its own). A seal older than
-- the hour's last touch (with a margin for inserts in flight) no longer counts.
CREATE TABLE IF NOT EXISTS stats_session_touches ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    touched_at  SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY start_hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_session_touches_mv ${ON_CLUSTER}
TO stats_session_touches
AS SELECT
    toStartOfHour(ifNull(session_started_at, received_at)) AS start_hour,
    max(now64(3, 'UTC')) AS touched_at
FROM tracking_events
WHERE NOT is_bot
GROUP BY start_hour;
