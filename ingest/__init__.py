"""The HTTP edge: beacon endpoint, enrichment, batch writer, admin API, tracker script."""
