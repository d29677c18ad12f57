"""Limits several parts of the service must agree on, written once."""

from __future__ import annotations

# Raw tracking events stay in ClickHouse this long (sql/0002's TTL says the same: a migration
# cannot import it, and an applied migration is never edited; tests/test_migrations checks).
RAW_RETENTION_DAYS = 90

# The longest range a dashboard, a stats query or an export may ask for.
MAX_RANGE_DAYS = 400
