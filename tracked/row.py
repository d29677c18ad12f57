"""The row a tracking event becomes in `tracking_events`, in the table's column names.

Rows are encoded as JSONCompactEachRow lines (array-like structs, msgspec), which ClickHouse
parses without holding our GIL; the same bytes are what a failed batch keeps for its retry.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


# gc=False: rows hold only scalars, so they cannot be part of a reference cycle, and keeping
# hundreds of thousands of them out of the collector's sight keeps GC pauses short.
class TrackingRow(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    event_id: uuid.UUID
    event_type: str
    session_id: uuid.UUID
    user_id: uuid.UUID | None
    received_at: datetime
    client_timestamp: datetime | None
    occurred_at: datetime
    url: str
    referrer: str = ""
    user_agent: str = ""
    device_type: str = ""
    browser: str = ""
    browser_version: str = ""
    os: str = ""
    os_version: str = ""
    is_bot: bool = False
    country: str = ""
    region: str = ""
    city: str = ""
    session_seq: int = 0
    session_started_at: datetime | None = None
    landing_page: str = ""
    entry_referrer: str = ""
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    is_returning: bool = False
    properties: str = "{}"


TRACKING_COLUMNS: tuple[str, ...] = TrackingRow.__struct_fields__
