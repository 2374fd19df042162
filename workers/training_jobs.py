"""RQ jobs of the training queue."""

from __future__ import annotations

import logging
from typing import Any

from service import comparison, retrain_queue, retraining, training_sets
from service.db import session_scope
from workers.context import get_context
from workers.recorded import run_recorded

log = logging.getLogger(__name__)


def retrain(reason: str = "manual", force: bool = False) -> dict[str, Any]:
    """Retrain on the base dataset plus current labels, behind the quality gate (see
    `service.retraining.retrain`; `force`: even with nothing new since production). Raises
    on failure, so RQ records the job as failed (and does not run it again)."""
    log.info("retraining (%s) started", reason)
    return run_recorded(
        lambda again: _retrain(reason, force, again=again),
        retries=retrain_queue.RETRAIN_RETRIES,
        errors_final=True,
    )


def _retrain(reason: str, force: bool, *, again: bool) -> dict[str, Any]:
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        outcome = retraining.retrain(
            session,
            settings=ctx.settings,
            tags=ctx.tags,
            encoder=ctx.encoder,
            reason=reason,
            force=force,
            resume=again,
        )
    for warning in training_sets.scarce_tag_warnings(outcome):
        log.warning(warning)
    return outcome


def compare(a: str, b: str) -> dict[str, Any]:
    """Version `a` against version `b` on the frozen evaluation set (see
    `service.comparison.compare_registered`)."""
    return run_recorded(lambda _again: _compare(a, b), retries=0)


def _compare(a: str, b: str) -> dict[str, Any]:
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        return comparison.compare_registered(
            session, a=a, b=b, settings=ctx.settings, tags=ctx.tags, encoder=ctx.encoder
        )
