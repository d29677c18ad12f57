-- 0014_domain_events_hourly_wide_sums.sql
-- Hourly sums of amounts in Decimal(76, 6). An amount may be anything Decimal(38, 6) holds
-- (below 10^32), and ClickHouse does not refuse a Decimal(38, 6) sum that overflows: two such
-- amounts in one hour wrapped round to a negative total. The view is recreated to sum in the
-- wide type; rows already summed keep their (correct, narrower) values.
ALTER TABLE domain_events_hourly ${ON_CLUSTER} MODIFY COLUMN amount Decimal(76, 6);

DROP VIEW IF EXISTS domain_events_hourly_mv ${ON_CLUSTER};

CREATE MATERIALIZED VIEW IF NOT EXISTS domain_events_hourly_mv ${ON_CLUSTER}
TO domain_events_hourly
AS SELECT
    toStartOfHour(occurred_at) AS hour,
    event_type,
    currency,
    count() AS events,
    sum(toDecimal256(ifNull(amount, toDecimal128(0, 6)), 6)) AS amount
FROM analytics_events
GROUP BY hour, event_type, currency;
