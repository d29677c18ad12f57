-- 0016_funnels_kept_with_ids.sql
-- Funnel results are aggregates: kept indefinitely like the rollups (the 400-day TTL goes),
-- each with the id of its computation (`funnelId` of `lomash.analytics.funnel.completed`).
ALTER TABLE funnels ${ON_CLUSTER} ADD COLUMN IF NOT EXISTS funnel_id UUID FIRST;

ALTER TABLE funnels ${ON_CLUSTER} REMOVE TTL;
