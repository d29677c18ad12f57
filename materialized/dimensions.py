"""The dimensions a stats question can break down or filter by, each as its expression over a
tracking_events row (and over the rollups that keep the same columns: stats_visits,
stats_pages)."""

# Breakdown dimension -> its expression over a tracking_events row.
DIMENSIONS: dict[str, str] = {
    "page": "path",
    "entry_page": "path(landing_page)",
    "referrer": "domainWithoutWWW(entry_referrer)",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "country": "country",
    "city": "city",
    "device": "device_type",
    "browser": "browser",
    "os": "os",
    "event_type": "event_type",
}
# What `stats_visits` (sql/0021) keeps and can filter on: every dimension but the event-level ones.
VISIT_DIMENSIONS = frozenset(DIMENSIONS) - {"page", "event_type"}
