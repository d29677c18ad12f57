-- 0012_archive_log.sql
-- Which days of raw events are safe in cold storage: one row per table and day, written only
-- after the archived file was read back and its row count matched ClickHouse's.
CREATE TABLE IF NOT EXISTS archive_log ${ON_CLUSTER}
(
    table_name   LowCardinality(String),
    day          Date,
    object_key   String,
    rows         UInt64,
    bytes        UInt64,
    archived_at  DateTime64(3, 'UTC')
)
ENGINE = ${REPLICATED}ReplacingMergeTree(archived_at)
ORDER BY (table_name, day);
