"""RQ jobs of the training queue."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job

from service import comparison, retraining
from service.db import session_scope
from workers.context import get_context

log = logging.getLogger(__name__)


@contextmanager
def _final_on_error() -> Iterator[None]:
    """An error the job raises fails it for good: its retries (RETRAIN_RETRIES) are for a
    worker killed under it, while bad data, a missing base file or a timeout would fail every
    run again. RQ reads the retries left from this very job object once the error is out."""
    try:
        yield
    except Exception:
        job = get_current_job()
        if job is not None:
            job.retries_left = 0
        raise


def retrain(reason: str = "manual", force: bool = False) -> dict[str, Any]:
    """Retrain on the base dataset plus current labels, behind the quality gate (see
    `service.retraining.retrain`; `force`: even with nothing new since production). Raises
    on failure, so RQ records the job as failed (and does not run it again)."""
    log.info("retraining (%s) started", reason)
    with _final_on_error():
        ctx = get_context()
        with session_scope(ctx.engine) as session:
            outcome = retraining.retrain(
                session,
                settings=ctx.settings,
                tags=ctx.tags,
                encoder=ctx.encoder,
                reason=reason,
                force=force,
            )
    for tag, count in outcome["scarce_tags"].items():
        log.warning(retraining.scarce_tag_warning(tag, count))
    return outcome


def compare(a: str, b: str) -> dict[str, Any]:
    """Version `a` against version `b` on the frozen evaluation set (see
    `service.comparison.compare_registered`)."""
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        return comparison.compare_registered(
            session, a=a, b=b, settings=ctx.settings, tags=ctx.tags, encoder=ctx.encoder
        )
