-- 0008_product_views_hourly.sql
-- PRODUCT_VIEW events per UTC hour and product (properties.productId), bots excluded.
CREATE TABLE IF NOT EXISTS product_views_hourly ${ON_CLUSTER}
(
    hour        DateTime('UTC'),
    product_id  String,
    views       UInt64
)
ENGINE = ${REPLICATED}SummingMergeTree(views)
ORDER BY (hour, product_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS product_views_hourly_mv ${ON_CLUSTER}
TO product_views_hourly
AS SELECT
    toStartOfHour(received_at) AS hour,
    JSONExtractString(properties, 'productId') AS product_id,
    count() AS views
FROM tracking_events
WHERE event_type = 'PRODUCT_VIEW' AND NOT is_bot AND product_id != ''
GROUP BY hour, product_id;
