-- 0021_stats_visits.sql
-- Browser events (bots excluded) collapsed per UTC hour, session, visitor, session start and
-- every session-level attribute a stats filter can name: what a filtered overview reads instead
-- of the raw events (about a fifth of their rows, and no row per event). Exact: grouped by
-- every filterable column, a row matches a filter exactly when its events do. Rows are grouped
-- within each insert only (a plain MergeTree): the queries take uniqExact of ids and sums, which
-- do not care how events are split over rows. Events stored without session data start their
-- own session at their receive time, so those stay one row each. Kept 400 days like the other
-- stats rollups, so filtered overviews outlive the raw events' 90 days (whole hours only).
CREATE TABLE IF NOT EXISTS stats_visits ${ON_CLUSTER}
(
    hour            DateTime('UTC'),
    session_id      UUID,
    visitor         UUID,
    started         DateTime64(3, 'UTC'),
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

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_visits_mv ${ON_CLUSTER}
TO stats_visits
AS SELECT
    toStartOfHour(received_at) AS hour,
    session_id,
    ifNull(user_id, session_id) AS visitor,
    ifNull(session_started_at, received_at) AS started,
    country, city, device_type, browser, os,
    landing_page, entry_referrer, utm_source, utm_medium, utm_campaign,
    toUInt32(countIf(event_type = 'PAGEVIEW')) AS pageviews,
    toUInt32(count()) AS events
FROM tracking_events
WHERE NOT is_bot
GROUP BY hour, session_id, visitor, started, country, city, device_type, browser, os,
    landing_page, entry_referrer, utm_source, utm_medium, utm_campaign;
