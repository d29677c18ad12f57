-- 0007_tracking_events_hourly.sql
-- Browser events per UTC hour and type, bots excluded, kept current on insert. UTC hours let
-- reports cut days, weeks and months in any time zone (Europe/London moves by whole hours).
CREATE TABLE IF NOT EXISTS tracking_events_hourly ${ON_CLUSTER}
(
    hour        DateTime('UTC'),
    event_type  LowCardinality(String),
    events      UInt64
)
ENGINE = ${REPLICATED}SummingMergeTree(events)
ORDER BY (event_type, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS tracking_events_hourly_mv ${ON_CLUSTER}
TO tracking_events_hourly
AS SELECT toStartOfHour(received_at) AS hour, event_type, count() AS events
FROM tracking_events
WHERE NOT is_bot
GROUP BY hour, event_type;
