-- 0011_dashboard_snapshots.sql
-- Dashboards computed by rebuild-dashboards (and the last good answer for a range), kept 30
-- days; the API falls back to the newest when computing fails.
CREATE TABLE IF NOT EXISTS dashboard_snapshots ${ON_CLUSTER}
(
    computed_at   DateTime64(3, 'UTC'),
    range_start   DateTime64(3, 'UTC'),
    range_end     DateTime64(3, 'UTC'),
    label         LowCardinality(String),
    body          String CODEC(ZSTD(3))
)
ENGINE = ${REPLICATED}MergeTree
ORDER BY (range_start, range_end, computed_at)
TTL toDateTime(computed_at) + INTERVAL 30 DAY DELETE;
