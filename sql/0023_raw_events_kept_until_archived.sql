-- 0023_raw_events_kept_until_archived.sql
-- Raw events leave ClickHouse only through purge_old_events, which deletes a day past the
-- 90-day retention once archive_log says its Parquet copy was read back and matched (rows and
-- the event-id checksum): a TTL would delete a day whether or not it was archived. The log
-- records the checksum it verified.
ALTER TABLE tracking_events ${ON_CLUSTER} REMOVE TTL;

ALTER TABLE archive_log ${ON_CLUSTER} ADD COLUMN IF NOT EXISTS checksum String DEFAULT '';
