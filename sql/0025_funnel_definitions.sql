-- 0025_funnel_definitions.sql
-- The funnels admins define (POST /v1/analytics/funnels): one row per change of a name, the
-- latest version kept by the merges and by FINAL; a deleted funnel is a row with deleted = 1.
CREATE TABLE IF NOT EXISTS funnel_definitions ${ON_CLUSTER}
(
    name        String,
    definition  String,
    deleted     UInt8,
    changed_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ${REPLICATED}ReplacingMergeTree(version)
ORDER BY name;
