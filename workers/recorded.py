"""A job run with its record (`service.jobs`) kept up to date: started, then finished with its
result, failed with its error, or queued again for RQ's retry of a failed try.

Admins' jobs (a retraining, a comparison) and the jobs the service queues by itself (the
automatic retraining, the daily prune) are recorded, so that GET /jobs shows each one's state.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from rq import get_current_job
from rq.job import Job
from sqlmodel import Session

from service.entities import JobRecord, JobState
from service.jobs import error_line, job_ended, job_retrying, job_started, record_id_of
from workers.context import get_context

log = logging.getLogger(__name__)


def run_recorded(
    work: Callable[[bool], dict[str, Any]], *, retries: int, errors_final: bool = False
) -> dict[str, Any]:
    """Run `work` as the current job with its record kept up to date. `work` is told whether
    the job ran before (RQ's retry, up to `retries`, or queued again after Redis lost it while
    it ran): a run cut short may have left work to finish. With `errors_final`, an error fails
    the job for good: its retries are for a worker killed under it, while bad data, a missing
    base file or a timeout would fail every run again (RQ reads the retries left from this
    very job object once the error is out); else RQ's retries run it again, and the record
    says it is queued again with the try's error."""
    job = get_current_job()
    if job is None:  # called directly, not as an RQ job
        return work(False)
    try:
        return _run(job, work, retries=retries, errors_final=errors_final)
    except Exception:
        if errors_final:
            job.retries_left = 0
        raise


def _run(
    job: Job, work: Callable[[bool], dict[str, Any]], *, retries: int, errors_final: bool
) -> dict[str, Any]:
    """`run_recorded` for an RQ job. A job its record says finished is not run again: its
    worker died between recording that and telling RQ, which then ran it again."""
    record_id = record_id_of(job)
    retried = job.retries_left is not None and job.retries_left < retries
    with Session(get_context().engine) as session:
        before = session.get(JobRecord, record_id)
        ran_before = retried or (before is not None and before.started_at is not None)
        record = job_started(session, job_id=record_id)
        if record is not None and record.state is JobState.FINISHED:
            log.info("job %s already finished (its record says so): not run again", record_id)
            return dict(record.result or {})
    try:
        outcome = work(ran_before)
    except Exception:
        error = error_line(traceback.format_exc())
        if errors_final or not job.retries_left:
            _record(record_id, lambda s: job_ended(s, job_id=record_id, error=error))
        else:
            _record(record_id, lambda s: job_retrying(s, job_id=record_id, error=error))
        raise
    _record(record_id, lambda s: job_ended(s, job_id=record_id, result=outcome))
    return outcome


def _record(record_id: str, change: Callable[[Session], None]) -> None:
    """Record the job's end (or its retry); a database that fails here leaves the record as it
    was, for RQ's own state to answer (the job's outcome stands)."""
    try:
        with Session(get_context().engine) as session:
            change(session)
    except Exception:
        log.exception("job %s: could not record its end", record_id)
