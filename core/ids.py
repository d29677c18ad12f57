"""Identifiers the service makes itself."""

import uuid

from uuid_utils import compat


def new_event_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so server-made ids sort by when the event arrived."""
    return compat.uuid7()
