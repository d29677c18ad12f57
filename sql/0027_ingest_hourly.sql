-- 0027_ingest_hourly.sql
-- What became of the accepted tracking events, per UTC hour of their receipt: rows the writer
-- and the retry job add as they place each batch (tracked/accounting.py), inserted under the
-- batch's token so a batch placed again after a crash is counted once. `outcome`: accepted,
-- stored, filtered (reason: duplicate), lost (reason: refused), queued (waiting in the retry
-- queue: +n when handed off, -n when stored or refused there), and the lag histograms
-- queryable_ms and announced_ms (reason: the bucket's upper bound in milliseconds). Kept
-- indefinitely, as every aggregate is (0024): at most a few hundred rows an hour.
CREATE TABLE IF NOT EXISTS ingest_hourly ${ON_CLUSTER}
(
    hour     DateTime('UTC'),
    outcome  LowCardinality(String),
    reason   LowCardinality(String),
    events   Int64
)
ENGINE = ${REPLICATED}SummingMergeTree(events)
ORDER BY (hour, outcome, reason)
SETTINGS non_replicated_deduplication_window = 10000;
