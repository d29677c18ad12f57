-- 0029_stats_session_audience.sql
-- The sealed hours' sessions again, per audience: the country, device, browser and system
-- their events came with (the values a filter on those names; the server derives all four,
-- from GeoIP and the user agent). What a month's overview filtered on any of them merges: a
-- few hundred rows an hour whatever the traffic, instead of a row per session. Written by the
-- same seal as stats_session_hours (materialized/session_hours.py), with its sealed_at; a row
-- counts only under its hour's latest seal.
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
    -- The sessions per duration cut to 8 significant bits (the bfloat16 of the milliseconds,
    -- as quantileBFloat16 cuts them): a histogram of a few dozen buckets that merges by
    -- adding, many times faster than thousands of quantile states.
    durations   Map(UInt16, UInt64)
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
ORDER BY (start_hour, country, device_type, browser, os);

-- The sealed hours' sessions once more, per value of each filterable dimension (page, entry
-- page, referrer, UTM tags, place, device, browser, system, event type): a session counts
-- under every value one of its events has, once, so one `dimension:value` filter reads its
-- sessions from here exactly. As many rows an hour as values seen that hour.
CREATE TABLE IF NOT EXISTS stats_session_values ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    sealed_at   DateTime64(3, 'UTC'),
    dimension   LowCardinality(String),
    value       String,
    sessions    UInt64,
    bounces     UInt64,
    durations   Map(UInt16, UInt64)  -- as in stats_session_audience
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
ORDER BY (dimension, value, start_hour);

-- The sealed sessions an hour's audience rows leave out: those whose events came with more
-- than one audience (a phone that changed country mid-session), which a filter would count
-- under each. An hour with any is read per session under such a filter. -1: sealed before
-- audiences and values were.
ALTER TABLE stats_session_hours ${ON_CLUSTER} ADD COLUMN IF NOT EXISTS unplaced Int64 DEFAULT -1;
