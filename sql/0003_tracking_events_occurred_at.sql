-- 0003_tracking_events_occurred_at.sql
-- When the event happened by the client's clock, where that clock can be believed: the client
-- timestamp when it lies within the skew window around the receive time, else the receive time.
-- Reports order a visitor's events by this; `received_at` stays the partition and TTL time.
ALTER TABLE tracking_events ${ON_CLUSTER}
    ADD COLUMN IF NOT EXISTS occurred_at DateTime64(3, 'UTC') DEFAULT received_at
    AFTER client_timestamp;
