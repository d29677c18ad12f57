"""The beacon path: the track endpoint and tracker.js, decoding, client address, rate limit,
enrichment (GeoIP, user agent, bots, sessions), the tracking log on disk, its writer into
ClickHouse and its relay onto RabbitMQ."""
