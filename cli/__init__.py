"""The `analytics` command: the processes (serve, api, consume, relay), migrate, demo (and its
traffic generator), jobs, restore-day, token."""
