"""RQ jobs of the training queue."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job
from sqlmodel import Session

from service import comparison, retraining, training_sets
from service.db import session_scope
from service.entities import JobRecord, JobState
from service.jobs import error_line, job_ended, job_started
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


def _recorded(work: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` as the current job with its record (an admin's job has one, see
    `service.jobs`) kept up to date: started, then finished with its result or failed with its
    error (an error fails these jobs for good). A job its record says finished is not run
    again: its worker died between recording that and telling RQ, which then ran it again.
    `work` is told whether the job ran before (RQ's retry, or queued again after Redis lost
    it while it ran): a run cut short may have left work to finish."""
    job = get_current_job()
    if job is None:  # called directly, not as an RQ job
        return work(False)
    retried = job.retries_left is not None and job.retries_left < retraining.RETRAIN_RETRIES
    with Session(get_context().engine) as session:
        before = session.get(JobRecord, job.id)
        ran_before = retried or (before is not None and before.started_at is not None)
        record = job_started(session, job_id=job.id)
        if record is not None and record.state is JobState.FINISHED:
            log.info("job %s already finished (its record says so): not run again", job.id)
            return dict(record.result or {})
    try:
        outcome = work(ran_before)
    except Exception:
        _record_end(job.id, error=error_line(traceback.format_exc()))
        raise
    _record_end(job.id, result=outcome)
    return outcome


def _record_end(job_id: str, *, result: Any = None, error: str | None = None) -> None:
    """Record the job's end; a database that fails here leaves the record as it was, for RQ's
    own state to answer (the job's outcome stands)."""
    try:
        with Session(get_context().engine) as session:
            job_ended(session, job_id=job_id, result=result, error=error)
    except Exception:
        log.exception("job %s: could not record its end", job_id)


def retrain(reason: str = "manual", force: bool = False) -> dict[str, Any]:
    """Retrain on the base dataset plus current labels, behind the quality gate (see
    `service.retraining.retrain`; `force`: even with nothing new since production). Raises
    on failure, so RQ records the job as failed (and does not run it again)."""
    log.info("retraining (%s) started", reason)
    with _final_on_error():
        return _recorded(lambda again: _retrain(reason, force, again=again))


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
    for tag, count in outcome["scarce_tags"].items():
        log.warning(training_sets.scarce_tag_warning(tag, count))
    return outcome


def compare(a: str, b: str) -> dict[str, Any]:
    """Version `a` against version `b` on the frozen evaluation set (see
    `service.comparison.compare_registered`)."""
    return _recorded(lambda _again: _compare(a, b))


def _compare(a: str, b: str) -> dict[str, Any]:
    ctx = get_context()
    with session_scope(ctx.engine) as session:
        return comparison.compare_registered(
            session, a=a, b=b, settings=ctx.settings, tags=ctx.tags, encoder=ctx.encoder
        )
