"""What every process needs and the contracts shared between packages: settings, the runtime
and its clients (ClickHouse, Redis, the publisher, storage), migrations, metrics, the published
messages, Redis key and job names, ids, limits, the stored row shapes, the retry queue and the
export state."""
