-- 0029_stats_session_audience.sql
-- The sealed hours (0028) per value and per audience, and a duration histogram for each: what
-- a long range's filtered overview merges instead of a row per session. All three tables are
-- written by one seal with one sealed_at (materialized/session_hours.py); a row counts only
-- under its hour's latest seal, and the seal deletes its hours' older rows once it is whole.
--
-- Durations are kept as the sessions per duration cut to 8 significant bits (the bfloat16 of
-- the milliseconds: the top 16 bits of its float32), a histogram of a few dozen buckets that
-- merges by adding: many times faster than thousands of quantile states, and its median can
-- be interpolated as the exact one is.
ALTER TABLE stats_session_hours ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS histogram Map(UInt16, UInt64);

-- How many of the hour's sessions its audience rows leave out: those whose events came with
-- more than one audience (a phone that changed country mid-session), which a filter would
-- count under each. An hour with any is read per session under several audience filters.
-- -1: sealed before this migration (no histogram, no values, no audiences): sealed again.
ALTER TABLE stats_session_hours ${ON_CLUSTER} ADD COLUMN IF NOT EXISTS unplaced Int64 DEFAULT -1;

-- Per sealed start hour and value of each filterable dimension (page, entry page, referrer,
-- UTM tags, place, device, browser, system, event type): the sessions with an event of that
-- value, each once, so that one `dimension:value` filter reads its sessions here exactly. As
-- many rows an hour as values seen that hour.
CREATE TABLE IF NOT EXISTS stats_session_values ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    sealed_at   DateTime64(3, 'UTC'),
    dimension   LowCardinality(String),
    value       String,
    sessions    UInt64,
    bounces     UInt64,
    histogram   Map(UInt16, UInt64)
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
ORDER BY (dimension, value, start_hour);

-- Per sealed start hour and audience: the country, device, browser and system a session's
-- events all came with (the server derives all four, from GeoIP and the user agent). Several
-- filters on those read their sessions here: a few hundred rows an hour whatever the traffic.
CREATE TABLE IF NOT EXISTS stats_session_audience ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    sealed_at   DateTime64(3, 'UTC'),
    country     LowCardinality(String),
    device_type LowCardinality(String),
    browser     LowCardinality(String),
    os          LowCardinality(String),
    sessions    UInt64,
    bounces     UInt64,
    histogram   Map(UInt16, UInt64)
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
ORDER BY (start_hour, country, device_type, browser, os);
