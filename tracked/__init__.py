"""A tracking event once accepted, as the beacon path writes it and the retry job re-writes it:
its row in `tracking_events` (row.py), its `event.tracked` message (message.py) and the retry
queue of batches ClickHouse refused (retry_queue.py)."""
