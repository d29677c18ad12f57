-- 0033_stats_session_journeys.sql
-- The sealed hours (0028) per session: what a journey needs of it (materialized/journeys.py),
-- so that a month's journeys read one row per session instead of grouping every raw event of
-- the month by session. Written by the same seal as the hour's row, with its sealed_at; a row
-- counts only under its hour's latest seal, and the seal deletes its hours' older rows once
-- it is whole. Per session, bots left out: its visitor (the userId of its first event that
-- has one, else its sessionId), its entry page, its pages with repeats in a row collapsed
-- (each with the time of the first pageview of its run) and the time of the first event of
-- each type it had. Identifying: an erasure deletes a user's sessions here, and the raw days'
-- purge deletes the sessions that started in the days it purges.
CREATE TABLE IF NOT EXISTS stats_session_journeys ${ON_CLUSTER}
(
    start_hour  DateTime('UTC'),
    sealed_at   DateTime64(3, 'UTC'),
    session_id  UUID,
    started     DateTime64(3, 'UTC'),
    visitor     UUID,
    entry       String,
    pages       Array(String),
    page_at     Array(Int64),
    types       Array(LowCardinality(String)),
    type_at     Array(Int64)
)
ENGINE = ${REPLICATED}ReplacingMergeTree(sealed_at)
PARTITION BY toYYYYMM(start_hour)
ORDER BY (start_hour, session_id, started);

-- How many sessions the hour's seal wrote to stats_session_journeys; -1: sealed before this
-- migration, so read from the raw events until it is sealed again (the seal takes those hours
-- after the touched ones).
ALTER TABLE stats_session_hours ${ON_CLUSTER} ADD COLUMN IF NOT EXISTS journeys Int64 DEFAULT -1;
