-- 0002_tracking_events.sql
-- Raw beacon events from browsers, append-only, one row per accepted event.
-- Reports filter on event type and a time range first, so those lead the sort key; a month per
-- partition lets the 90-day TTL drop whole parts. `properties` is the client's JSON object, byte
-- for byte. The client IP is never stored: only what GeoIP derived from it.
CREATE TABLE IF NOT EXISTS tracking_events ${ON_CLUSTER}
(
    event_id            UUID,
    event_type          LowCardinality(String),
    session_id          UUID,
    user_id             Nullable(UUID),
    received_at         DateTime64(3, 'UTC'),
    client_timestamp    Nullable(DateTime64(3, 'UTC')),
    url                 String,
    path                String DEFAULT path(url),
    referrer            String,
    user_agent          String,
    device_type         LowCardinality(String),
    browser             LowCardinality(String),
    browser_version     LowCardinality(String),
    os                  LowCardinality(String),
    os_version          LowCardinality(String),
    is_bot              Bool DEFAULT false,
    country             LowCardinality(String),
    region              LowCardinality(String),
    city                LowCardinality(String),
    session_seq         UInt32 DEFAULT 0,
    session_started_at  Nullable(DateTime64(3, 'UTC')),
    landing_page        String,
    entry_referrer      String,
    utm_source          LowCardinality(String),
    utm_medium          LowCardinality(String),
    utm_campaign        String,
    is_returning        Bool DEFAULT false,
    properties          String CODEC(ZSTD(3))
)
ENGINE = ${REPLICATED}MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (event_type, received_at)
TTL toDateTime(received_at) + INTERVAL 90 DAY DELETE
-- A retried batch carries the same insert_deduplication_token and is stored once.
SETTINGS non_replicated_deduplication_window = 10000;
