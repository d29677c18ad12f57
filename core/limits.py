"""Limits several parts of the service must agree on, written once."""

from __future__ import annotations

from datetime import timedelta

# Raw tracking events stay in ClickHouse this long: `purge_old_events` removes a day past it
# once its archived copy is verified (materialized/archive.py), and a visitor's Redis state
# lives as long (ingest/sessions.py), so a returning visitor is one the raw rows can show.
RAW_RETENTION_DAYS = 90

# The longest range a dashboard, a stats query or an export may ask for.
MAX_RANGE_DAYS = 400

# A client clock is believed within this window around the receive time (batched beacons and
# offline queues arrive late; clocks run fast or slow); outside it the receive time is used.
# So an event's received_at lies within [occurred_at - FUTURE, occurred_at + PAST], which lets
# questions about occurred_at skip the parts of tracking_events by received_at.
TRUST_CLIENT_PAST = timedelta(hours=24)
TRUST_CLIENT_FUTURE = timedelta(minutes=5)
