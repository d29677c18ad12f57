-- 0018_stats_hourly.sql
-- The stats API's rollup: per UTC hour and per value of each breakdown dimension, pageviews
-- and a visitors sketch (uniqCombined64(12) of the visitor: userId when known, else sessionId;
-- a 4096-register HyperLogLog past a few hundred values, standard error about 1.6%),
-- bots excluded, kept current on insert. Dimension '' holds the site's totals. Unfiltered
-- overview, breakdown and timeseries answers merge these rows; nothing here scans raw events.
-- Session-level values (entry page, source, UTM) are the ones the pipeline stored on the
-- event from the session's first event.
CREATE TABLE IF NOT EXISTS stats_hourly ${ON_CLUSTER}
(
    dimension   LowCardinality(String),
    hour        DateTime('UTC'),
    value       String,
    pageviews   SimpleAggregateFunction(sum, UInt64),
    visitors    AggregateFunction(uniqCombined64(12), UUID)
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (dimension, hour, value)
TTL hour + INTERVAL 400 DAY DELETE;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_hourly_mv ${ON_CLUSTER}
TO stats_hourly
AS SELECT
    tupleElement(pair, 1) AS dimension,
    toStartOfHour(received_at) AS hour,
    tupleElement(pair, 2) AS value,
    countIf(event_type = 'PAGEVIEW') AS pageviews,
    uniqCombined64State(12)(ifNull(user_id, session_id)) AS visitors
FROM tracking_events
ARRAY JOIN [
    ('', ''),
    ('page', path),
    ('entry_page', path(landing_page)),
    ('referrer', domainWithoutWWW(entry_referrer)),
    ('utm_source', toString(utm_source)),
    ('utm_medium', toString(utm_medium)),
    ('utm_campaign', utm_campaign),
    ('country', toString(country)),
    ('city', toString(city)),
    ('device', toString(device_type)),
    ('browser', toString(browser)),
    ('os', toString(os)),
    ('event_type', toString(event_type))
] AS pair
WHERE NOT is_bot
GROUP BY dimension, hour, value;
