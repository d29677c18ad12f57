"""Every Redis key the service writes, by name, in one place.

Keys that one Lua script touches together share a hash tag (`{...}`), so the script runs on
one slot of a Redis Cluster; scripts receive their keys through KEYS, never build them.
"""

from __future__ import annotations

from datetime import date

# The retry queue of batches ClickHouse refused, and the batches a retrier is working on.
RETRY_QUEUE = "lw:retry:batches"
REFUSED_ROWS = "lw:retry:refused"  # rows ClickHouse refuses for their data, with the reason

# Live counters of domain events per local day; days whose increments Redis missed.
COUNTERS_STALE = "lw:counters:stale"

# Dashboard answers and the index of cached ranges.
DASHBOARD_CACHE_INDEX = "dashboard:snapshot:ranges"
# When the scheduled rebuild last finished; the raised stale-dashboard alert.
DASHBOARD_REBUILT_AT = "lw:dashboard:rebuilt-at"
DASHBOARD_STALE_ALERT = "lw:alerts:dashboard-stale"


# Rate-limit windows: requests per client, and events per client.
RATE_REQUESTS = "lw:rl:"
RATE_EVENTS = "lw:rle:"


def rate_window(prefix: str, client: str, window: int) -> str:
    return f"{prefix}{{{client}}}:{window}"


# Tracking sessions (per batch, one script): an accepted event id, a session, a known user.
def accepted_event(event_id: bytes) -> bytes:
    return b"lw:evt:" + event_id


def session(session_id: bytes) -> bytes:
    # `lw:s:`, not the hashes `lw:sess:` held before sessions were packed into one string:
    # those expire on their own instead of failing the session step with WRONGTYPE.
    return b"lw:s:" + session_id


def visitor(user_id: bytes) -> bytes:
    return b"lw:visitor:" + user_id


def counters(day: date) -> str:
    return f"lw:counters:{day.isoformat()}"


def dashboard_cache(start: str, end: str) -> str:
    return f"dashboard:snapshot:{start}:{end}"


def stats_cache(digest: str) -> str:
    """A stats API answer, by a digest of its path, range and parameters."""
    return f"lw:stats:{digest}"


def covered(job: str) -> str:
    """The stretch of time a job's stored results cover."""
    return f"lw:covered:{job}"


def late_pending(job: str) -> str:
    """Set while a recompute of `job` for late events is queued and not yet started."""
    return f"lw:late-pending:{job}"


def export_key(export_id: str) -> str:
    return f"lw:export:v2:{export_id}"
