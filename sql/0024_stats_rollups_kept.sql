-- 0024_stats_rollups_kept.sql
-- Aggregated metrics are kept indefinitely (raw events 90 days hot, aggregates forever): the
-- 400-day TTL of the five stats rollups goes, as the funnels' did in 0016.
ALTER TABLE stats_hourly ${ON_CLUSTER} REMOVE TTL;

ALTER TABLE stats_daily ${ON_CLUSTER} REMOVE TTL;

ALTER TABLE stats_sessions ${ON_CLUSTER} REMOVE TTL;

ALTER TABLE stats_visits ${ON_CLUSTER} REMOVE TTL;

ALTER TABLE stats_pages ${ON_CLUSTER} REMOVE TTL;
