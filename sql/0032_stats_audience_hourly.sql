-- 0032_stats_audience_hourly.sql
-- Per UTC hour and audience (the country, device, browser and system the server derives for
-- every event, from GeoIP and the user agent): pageviews and a visitors sketch (uniqCombined64
-- (12) of the visitor, as stats_hourly's), bots excluded, kept current on insert. A long
-- range's overview under several audience filters (country:GB;device:mobile) merges these
-- instead of counting every visit's id: a few hundred rows an hour whatever the traffic.
-- Kept indefinitely, as every aggregate is (0024).
CREATE TABLE IF NOT EXISTS stats_audience_hourly ${ON_CLUSTER}
(
    country     LowCardinality(String),
    device_type LowCardinality(String),
    browser     LowCardinality(String),
    os          LowCardinality(String),
    hour        DateTime('UTC'),
    pageviews   SimpleAggregateFunction(sum, UInt64),
    visitors    AggregateFunction(uniqCombined64(12), UUID)
)
ENGINE = ${REPLICATED}AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (country, device_type, browser, os, hour)
SETTINGS non_replicated_deduplication_window = 10000;

-- The events stored before the view exists, summed from stats_pages (0022: the same hours,
-- audiences and visitors, bots left out, erasures applied, and kept after the raw days are
-- purged), before the view is created, into the months the table holds nothing of: a
-- migration cut after the copy and applied again copies nothing twice. Exact when the
-- migration runs alone (`analytics serve`, or `analytics migrate` before the other processes
-- start); events stored by other processes between the copy and the view's creation would
-- be missed, and a copy cut half-way leaves its months part-filled.
INSERT INTO stats_audience_hourly
SELECT
    country, device_type, browser, os, hour,
    sum(pageviews) AS pageviews,
    uniqCombined64State(12)(visitor) AS visitors
FROM stats_pages
WHERE toYYYYMM(hour) NOT IN (SELECT DISTINCT toYYYYMM(hour) FROM stats_audience_hourly)
GROUP BY country, device_type, browser, os, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS stats_audience_hourly_mv ${ON_CLUSTER}
TO stats_audience_hourly
AS SELECT
    country, device_type, browser, os,
    toStartOfHour(received_at) AS hour,
    countIf(event_type = 'PAGEVIEW') AS pageviews,
    uniqCombined64State(12)(ifNull(user_id, session_id)) AS visitors
FROM tracking_events
WHERE NOT is_bot
GROUP BY country, device_type, browser, os, hour;
