"""ClickHouse: the client, the migration runner and the read side (counters, funnels, widgets)."""
