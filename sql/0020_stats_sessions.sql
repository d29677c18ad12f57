-- 0020_stats_sessions.sql
-- One row per browsing session (bots excluded), keyed by the hour it started, kept current on
-- insert: first and last event time (the client clock where it can be believed), pageviews
-- and events. The stats API's sessions, bounce rate and visit duration merge these rows.
-- A session starts at `session_started_at` (the pipeline's first sight of it, the same on
-- every event of the session); events stored without session data start their own.
CREATE TABLE IF NOT EXISTS stats_sessions ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    session_id  UUID,
    first_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    pageviews   SimpleAggregateFunction(sum, UInt64),
    events      SimpleAggregateFunction(sum, UInt64)
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(start_hour)
ORDER BY (start_hour, session_id)
TTL start_hour + INTERVAL 400 DAY DELETE;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_sessions_mv ${ON_CLUSTER}
TO stats_sessions
AS SELECT
    toStartOfHour(ifNull(session_started_at, received_at)) AS start_hour,
    session_id,
    min(occurred_at) AS first_at,
    max(occurred_at) AS last_at,
    countIf(event_type = 'PAGEVIEW') AS pageviews,
    count() AS events
FROM tracking_events
WHERE NOT is_bot
GROUP BY start_hour, session_id;
