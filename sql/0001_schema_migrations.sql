-- 0001_schema_migrations.sql
-- The ledger of applied migrations: one row per file, with the checksum of its text when applied.
CREATE TABLE IF NOT EXISTS schema_migrations ${ON_CLUSTER}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ${REPLICATED}ReplacingMergeTree
ORDER BY version;
