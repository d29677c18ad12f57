-- 0005_domain_events_hourly.sql
-- Real-time counters of domain events, kept current on insert: per UTC hour, event type and
-- currency, how many and how much. Hours (not days) so that reports can cut days, weeks and
-- months in any time zone, Europe/London's clock changes included.
CREATE TABLE IF NOT EXISTS domain_events_hourly ${ON_CLUSTER}
(
    hour        DateTime('UTC'),
    event_type  LowCardinality(String),
    currency    LowCardinality(String),
    events      UInt64,
    amount      Decimal(38, 6)
)
ENGINE = ${REPLICATED}SummingMergeTree((events, amount))
ORDER BY (event_type, hour, currency);

CREATE MATERIALIZED VIEW IF NOT EXISTS domain_events_hourly_mv ${ON_CLUSTER}
TO domain_events_hourly
AS SELECT
    toStartOfHour(occurred_at) AS hour,
    event_type,
    currency,
    count() AS events,
    sum(ifNull(amount, toDecimal128(0, 6))) AS amount
FROM analytics_events
GROUP BY hour, event_type, currency;
