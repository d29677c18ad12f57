-- 0015_dashboard_snapshot_ids.sql
-- Each snapshot row has an id, which `lomash.analytics.dashboard.refreshed` carries
-- (`snapshotId`). Rows written before this migration get a random one.
ALTER TABLE dashboard_snapshots ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS snapshot_id UUID DEFAULT generateUUIDv4() FIRST;
