"""Housekeeping jobs, run by `tagflow worker` from the training queue (slow, rare work)."""

from __future__ import annotations

from service.retention import prune_older_than
from workers.context import get_context


def prune(older_than_days: float) -> dict[str, int]:
    """Retention: delete logged predictions, and outbox rows done, older than `older_than_days`
    (service/retention.py); counts by table."""
    return prune_older_than(get_context().engine, days=older_than_days)
