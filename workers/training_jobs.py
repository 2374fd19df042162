"""RQ jobs of the training queue."""

from __future__ import annotations

import logging
from typing import Any

from service import comparison, retraining
from service.db import session_scope
from workers.context import get_context

log = logging.getLogger(__name__)


def retrain(reason: str = "manual") -> dict[str, Any]:
    """Retrain on the base dataset plus current labels, behind the quality gate (see
    `service.retraining.retrain`). Raises on failure, so RQ records the job as failed."""
    ctx = get_context()
    log.info("retraining (%s) started", reason)
    with session_scope(ctx.engine) as session:
        return retraining.retrain(
            session, settings=ctx.settings, tags=ctx.tags, encoder=ctx.encoder, reason=reason
        )


def compare(a: str, b: str) -> dict[str, Any]:
    """Version `a` against version `b` on the frozen evaluation set (see
    `service.comparison.compare_registered`)."""
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        return comparison.compare_registered(
            session, a=a, b=b, settings=ctx.settings, tags=ctx.tags, encoder=ctx.encoder
        )
