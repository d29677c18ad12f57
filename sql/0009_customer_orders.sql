-- 0009_customer_orders.sql
-- Who ordered when, for new vs returning customers: orders per UTC hour and customer, and each
-- customer's first order ever. A customer is new in a range if their first order is in it.
CREATE TABLE IF NOT EXISTS customer_orders_hourly ${ON_CLUSTER}
(
    hour         DateTime('UTC'),
    customer_id  UUID,
    orders       UInt64
)
ENGINE = ${REPLICATED}SummingMergeTree(orders)
ORDER BY (hour, customer_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS customer_orders_hourly_mv ${ON_CLUSTER}
TO customer_orders_hourly
AS SELECT toStartOfHour(occurred_at) AS hour, assumeNotNull(customer_id) AS customer_id,
          count() AS orders
FROM analytics_events
WHERE event_type = 'order-created' AND customer_id IS NOT NULL
GROUP BY hour, customer_id;

CREATE TABLE IF NOT EXISTS customer_first_order ${ON_CLUSTER}
(
    customer_id  UUID,
    first_order  AggregateFunction(min, DateTime64(3, 'UTC'))
)
ENGINE = ${REPLICATED}AggregatingMergeTree
ORDER BY customer_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS customer_first_order_mv ${ON_CLUSTER}
TO customer_first_order
AS SELECT assumeNotNull(customer_id) AS customer_id, minState(occurred_at) AS first_order
FROM analytics_events
WHERE event_type = 'order-created' AND customer_id IS NOT NULL
GROUP BY customer_id;
