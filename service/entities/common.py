"""Column helpers shared by the tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware now; stored as UTC everywhere."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random 32-character hex id, used where ids are handed to outsiders."""
    return uuid.uuid4().hex


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; treat them as the UTC they were written as."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def day_start(now: datetime) -> datetime:
    """Midnight (UTC) of `now`'s day: where "today" starts in the queue's counts."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
