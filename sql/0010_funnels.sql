-- 0010_funnels.sql
-- Results of recompute-funnels: per funnel and period, the visitors reaching each step.
CREATE TABLE IF NOT EXISTS funnels ${ON_CLUSTER}
(
    computed_at      DateTime64(3, 'UTC'),
    funnel           LowCardinality(String),
    period_start     DateTime64(3, 'UTC'),
    period_end       DateTime64(3, 'UTC'),
    window_seconds   UInt32,
    step_names       Array(String),
    step_counts      Array(UInt64),
    conversion_rate  Float64
)
ENGINE = ${REPLICATED}MergeTree
ORDER BY (funnel, computed_at)
TTL toDateTime(computed_at) + INTERVAL 400 DAY DELETE;
