-- 0004_analytics_events.sql
-- Domain events from the platform (RabbitMQ), one row per eventId: the common facts as typed
-- columns, the payload as received (JSON text, extra fields included). The consumer checks the
-- eventId against this table before inserting, so redeliveries are not stored again; the
-- bloom filter makes that check cheap. Replacing on event_id is a last line of defence for
-- queries using FINAL.
CREATE TABLE IF NOT EXISTS analytics_events ${ON_CLUSTER}
(
    event_id          UUID,
    event_type        LowCardinality(String),
    routing_key       LowCardinality(String),
    version           LowCardinality(String),
    occurred_at       DateTime64(3, 'UTC'),
    received_at       DateTime64(3, 'UTC'),
    customer_id       Nullable(UUID),
    order_id          Nullable(UUID),
    payment_id        Nullable(UUID),
    booking_id        Nullable(UUID),
    product_id        Nullable(UUID),
    showroom_id       Nullable(UUID),
    entity_id         Nullable(UUID),
    amount            Nullable(Decimal(38, 6)),
    currency          LowCardinality(String),
    quantity          Nullable(Int64),
    rating            Nullable(UInt8),
    appointment_type  LowCardinality(String),
    scheduled_at      Nullable(DateTime64(3, 'UTC')),
    payload           String CODEC(ZSTD(3)),
    INDEX event_id_bloom event_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ${REPLICATED}ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_type, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
