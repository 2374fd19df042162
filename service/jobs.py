"""Background jobs as the API sees them: queueing one with a kept result, and reading its state.

The jobs themselves are plain functions in `workers/`, queued by dotted name: the API
process never imports the worker modules, and a job runs with the worker's context.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from service.errors import NotFoundError, UnavailableError

# Every job's timeout, in one place: RQ stops a job that runs longer and records it as failed,
# and whatever lets a worker finish its job before stopping it (compose's stop grace period,
# `tagflow up`) must wait for the longest of them, or it cuts that job short.
JOB_TIMEOUT_S = 30 * 60  # a retraining, a comparison of two versions
REPRIORITIZE_TIMEOUT_S = 30 * 60  # the review queue re-scored by a newly served model
REVIEW_JOB_TIMEOUT_S = 10 * 60  # a labelling job: up to REVIEW_BATCH review payloads
# Deleting a large backlog in batches of 5,000 rows: 70,000 rows/s on SQLite, 41,000 on
# PostgreSQL (measured with `tagflow db prune`), so an hour covers well over 100 million rows.
PRUNE_TIMEOUT_S = 60 * 60
LONGEST_JOB_TIMEOUT_S = max(
    JOB_TIMEOUT_S, REPRIORITIZE_TIMEOUT_S, REVIEW_JOB_TIMEOUT_S, PRUNE_TIMEOUT_S
)
RESULT_TTL_S = 7 * 24 * 3600


class JobState(StrEnum):
    """A job's state as the API reports it (RQ's finer states folded into these four)."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


class JobAccepted(BaseModel):
    """The answer to a request that queued a job."""

    job_id: str


class JobPublic(BaseModel):
    """A background job as the API reports it."""

    job_id: str
    status: JobState
    result: Any = None
    error: str | None = None


_STATES = {
    JobStatus.STARTED: JobState.STARTED,
    JobStatus.FINISHED: JobState.FINISHED,
    JobStatus.FAILED: JobState.FAILED,
    JobStatus.STOPPED: JobState.FAILED,
    JobStatus.CANCELED: JobState.FAILED,
}


def enqueue_job(
    queue: Queue, func: str, *args: str | bool, description: str, retry: Retry | None = None
) -> str:
    """Queue a job whose result is kept a week (GET /jobs/{id}), run again as `retry` says
    when it fails; UnavailableError without Redis."""
    try:
        job = queue.enqueue(
            func,
            *args,
            job_timeout=JOB_TIMEOUT_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            description=description,
            retry=retry,
        )
    except RedisError as exc:
        raise UnavailableError(f"Redis is unavailable, {description} not queued: {exc}") from exc
    return job.id


# What SQLAlchemy appends to an error's message: the statement, its parameters, a web link.
_APPENDIX = ("[SQL:", "[parameters:", "(Background on this error at")
MAX_ERROR_LINES = 30


def error_line(exc_info: str | None) -> str:
    """What a failed job's traceback says went wrong: the exception's name and message, the
    text after the last frame (which is not always the last line: SQLAlchemy's message ends
    with its SQL and a documentation link; a training file's report runs over many lines)."""
    lines = [line for line in (exc_info or "").strip().splitlines() if line.strip()]
    if not lines:
        return "the job failed without an error message"
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and lines[start].startswith("    "):  # the frame's code, carets
        start += 1
    message = lines[start:]
    kept = [line for line in message if not line.startswith(_APPENDIX)] or lines[-1:]
    return "\n".join(kept[:MAX_ERROR_LINES])


def job_public(connection: Redis, *, job_id: str) -> JobPublic:
    """The state of a job; NotFoundError for unknown (or expired) ids."""
    try:
        job = Job.fetch(job_id, connection=connection)
        state = _STATES.get(job.get_status(refresh=True), JobState.QUEUED)
        result = job.return_value() if state is JobState.FINISHED else None
        error = error_line(job.exc_info) if state is JobState.FAILED else None
    except NoSuchJobError:
        raise NotFoundError(f"job {job_id!r} does not exist (or its result expired)") from None
    except RedisError as exc:
        raise UnavailableError(f"Redis is unavailable, job state unknown: {exc}") from exc
    return JobPublic(job_id=job_id, status=state, result=result, error=error)
