-- 0013_tracking_events_restored.sql
-- Days brought back from the archive by `analytics restore-day`. Same columns as
-- tracking_events but no TTL (restored days are older than it) and no views on it, so a
-- restored day is never counted into the rollups a second time.
CREATE TABLE IF NOT EXISTS tracking_events_restored ${ON_CLUSTER}
AS tracking_events
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (event_type, received_at);
