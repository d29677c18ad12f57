-- 0006_blog_views_hourly.sql
-- Blog engagement, kept current on insert: page views of /blog/... per UTC hour and path,
-- bots excluded.
CREATE TABLE IF NOT EXISTS blog_views_hourly ${ON_CLUSTER}
(
    hour   DateTime('UTC'),
    path   String,
    views  UInt64
)
ENGINE = ${REPLICATED}SummingMergeTree(views)
ORDER BY (hour, path);

CREATE MATERIALIZED VIEW IF NOT EXISTS blog_views_hourly_mv ${ON_CLUSTER}
TO blog_views_hourly
AS SELECT
    toStartOfHour(received_at) AS hour,
    path,
    count() AS views
FROM tracking_events
WHERE event_type = 'PAGEVIEW' AND NOT is_bot AND startsWith(path, '/blog/')
GROUP BY hour, path;
