-- 0019_stats_daily.sql
-- stats_hourly summed to UTC days, kept current from its inserts. A month's answer merges about
-- thirty day sketches per value, plus the hours at its two ends, instead of 720 hour sketches:
-- merging sketches, not reading them, is what a month costs.
CREATE TABLE IF NOT EXISTS stats_daily ${ON_CLUSTER}
(
    dimension   LowCardinality(String),
    day         DateTime('UTC'),
    value       String,
    pageviews   SimpleAggregateFunction(sum, UInt64),
    visitors    AggregateFunction(uniqCombined64(12), UUID)
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (dimension, day, value)
TTL day + INTERVAL 400 DAY DELETE;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_daily_mv ${ON_CLUSTER}
TO stats_daily
AS SELECT
    dimension,
    toStartOfDay(hour) AS day,
    value,
    sum(pageviews) AS pageviews,
    uniqCombined64MergeState(12)(visitors) AS visitors
FROM stats_hourly
GROUP BY dimension, day, value;
