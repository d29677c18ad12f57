"""The read side over ClickHouse: dashboard widgets, stats, funnels, report exports and their
state, snapshots, the archive of raw days; and the Redis-held state kept beside them (live
counters, the dashboard cache, what stored aggregates cover)."""
