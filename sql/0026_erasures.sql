-- 0026_erasures.sql
-- Erasures of a user's data (POST /v1/analytics/erasures), one row per change of state, the
-- latest version kept by FINAL: the audit of who asked, when, and how many rows each table
-- lost. The user id is kept only as a keyed hash (HMAC-SHA256 under ERASURE_AUDIT_KEY).
-- `progress` is the running erasure's plan and done steps (JSON, materialized/erasure.py),
-- emptied of session ids once it is done.
CREATE TABLE IF NOT EXISTS erasures ${ON_CLUSTER}
(
    erasure_id    UUID,
    user_hash     String,
    requested_by  String,
    requested_at  DateTime64(3, 'UTC'),
    status        LowCardinality(String),
    started_at    Nullable(DateTime64(3, 'UTC')),
    finished_at   Nullable(DateTime64(3, 'UTC')),
    removed       Map(String, UInt64),
    progress      String,
    error         String,
    version       UInt64
)
ENGINE = ${REPLICATED}ReplacingMergeTree(version)
ORDER BY erasure_id;
