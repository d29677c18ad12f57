-- 0022_stats_pages.sql
-- Browser events (bots excluded) collapsed per UTC hour, session, visitor, session start, page,
-- event type and every session-level attribute: what filtered stats read when the filter or
-- the breakdown names an event-level dimension (page, event type), which stats_visits (0021)
-- cannot answer. Exact for the same reason as stats_visits: grouped by every filterable column.
-- Narrower than the raw events (no URL, user agent or properties; the page and the place as
-- LowCardinality, whole hours as DateTime), so a month's scan and group-by per page costs
-- about half the raw one. Kept 400 days like the other stats rollups.
CREATE TABLE IF NOT EXISTS stats_pages ${ON_CLUSTER}
(
    hour            DateTime('UTC'),
    session_id      UUID,
    visitor         UUID,
    started         DateTime64(3, 'UTC'),
    path            LowCardinality(String),
    event_type      LowCardinality(String),
    country         LowCardinality(String),
    city            LowCardinality(String),
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    landing_page    String,
    entry_referrer  String,
    utm_source      String,
    utm_medium      String,
    utm_campaign    String,
    pageviews       UInt32,
    events          UInt32
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, session_id)
TTL hour + INTERVAL 400 DAY DELETE;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_pages_mv ${ON_CLUSTER}
TO stats_pages
AS SELECT
    toStartOfHour(received_at) AS hour,
    session_id,
    ifNull(user_id, session_id) AS visitor,
    ifNull(session_started_at, received_at) AS started,
    path, event_type,
    country, city, device_type, browser, os,
    landing_page, entry_referrer, utm_source, utm_medium, utm_campaign,
    toUInt32(countIf(event_type = 'PAGEVIEW')) AS pageviews,
    toUInt32(count()) AS events
FROM tracking_events
WHERE NOT is_bot
GROUP BY hour, session_id, visitor, started, path, event_type, country, city, device_type,
    browser, os, landing_page, entry_referrer, utm_source, utm_medium, utm_campaign;
