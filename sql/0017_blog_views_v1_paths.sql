-- 0017_blog_views_v1_paths.sql
-- Blog engagement per the platform's spec: page views whose path starts with /blog/ or
-- /v1/blog/ (the blog service's own routes). The view is recreated; rows already counted stay.
DROP VIEW IF EXISTS blog_views_hourly_mv ${ON_CLUSTER};

CREATE MATERIALIZED VIEW IF NOT EXISTS blog_views_hourly_mv ${ON_CLUSTER}
TO blog_views_hourly
AS SELECT
    toStartOfHour(received_at) AS hour,
    path,
    count() AS views
FROM tracking_events
WHERE event_type = 'PAGEVIEW' AND NOT is_bot
    AND (startsWith(path, '/blog/') OR startsWith(path, '/v1/blog/'))
GROUP BY hour, path;
