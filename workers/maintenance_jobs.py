"""Housekeeping jobs, run by `tagflow worker` from the training queue (slow, rare work)."""

from __future__ import annotations

from service.retention import PRUNE_RETRY, prune_older_than
from workers.context import get_context
from workers.recorded import run_recorded


def prune(older_than_days: float) -> dict[str, int]:
    """Retention: delete logged predictions, and outbox rows done, older than `older_than_days`
    (service/retention.py); counts by table. Recorded (GET /jobs); a failed try is retried
    (`PRUNE_RETRY`)."""
    return run_recorded(
        lambda _again: prune_older_than(get_context().engine, days=older_than_days),
        retries=PRUNE_RETRY.max,
    )
