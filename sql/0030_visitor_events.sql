-- 0030_visitor_events.sql
-- Browser events (bots excluded) laid out by a hash of their visitor (the userId, else the
-- sessionId: the funnels' visitor), so a funnel over a month of heavy traffic can read every
-- event of a share of the visitors and nothing of the others (materialized/funnel_chains.py):
-- `sample` is cityHash64(visitor) % 256, and `sample < k` is k/256 of the visitors, whole.
-- Only what a funnel step matches is kept (type, time, path, properties), with the keys an
-- erasure and the raw days' purge delete by. It lives as long as the raw events do: the purge
-- deletes a day here with the day in tracking_events.
CREATE TABLE IF NOT EXISTS visitor_events ${ON_CLUSTER}
(
    sample       UInt8,
    visitor      UUID,
    event_type   LowCardinality(String),
    occurred_at  DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    event_id     UUID,
    session_id   UUID,
    path         String,
    properties   String CODEC(ZSTD(3))
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (sample, event_type, occurred_at);

CREATE MATERIALIZED VIEW IF NOT EXISTS visitor_events_mv ${ON_CLUSTER}
TO visitor_events
AS SELECT
    toUInt8(cityHash64(ifNull(user_id, session_id)) % 256) AS sample,
    ifNull(user_id, session_id) AS visitor,
    event_type,
    occurred_at,
    received_at,
    event_id,
    session_id,
    path,
    properties
FROM tracking_events
WHERE NOT is_bot;

-- The events stored before this view: copied once, after the view exists, leaving out any the
-- view took meanwhile (so a run cut short and applied again copies nothing twice).
INSERT INTO visitor_events
SELECT
    toUInt8(cityHash64(ifNull(user_id, session_id)) % 256) AS sample,
    ifNull(user_id, session_id) AS visitor,
    event_type,
    occurred_at,
    received_at,
    event_id,
    session_id,
    path,
    properties
FROM tracking_events
WHERE NOT is_bot AND event_id NOT IN (SELECT event_id FROM visitor_events);
