"""Background jobs as the API sees them: queueing one with a kept result, and reading its state.

The jobs themselves are plain functions in `workers/`, queued by dotted name: the API
process never imports the worker modules, and a job runs with the worker's context.

An admin's job (a retraining, a comparison) is recorded in the database before it is queued
(`JobRecord`), and its worker keeps the record up to date: Redis may lose the job (a restart:
the machine's Redis keeps nothing on disk), and the job is then queued again from its record
(`redeliver_lost_jobs`), while GET /jobs/{id} answers from the record.

The jobs the service queues by itself, the automatic retraining and the daily prune, are
recorded too (`record_job`), so that GET /jobs lists every background job with its outcome;
they are not queued again from their record (`is_automatic`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, field_validator
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from sqlmodel import Session, col, select

from service.entities import JobRecord, JobState
from service.entities.common import as_utc, showable, utcnow
from service.errors import NotFoundError, RefusedError, UnavailableError, is_redis_refusal

log = logging.getLogger(__name__)

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

# The jobs the service queues by itself, by their recorded description. Each one's trigger
# queues the next once Redis lost it (the labels since the last snapshot, the prune's daily
# key, which lives in the same Redis), so a lost one is recorded as failed, not sent again.
AUTO_RETRAIN_DESCRIPTION = "retrain (auto)"
PRUNE_DESCRIPTION = "prune (retention)"
# The automatic retraining has one RQ id for every run, which de-duplicates it
# (service.retrain_queue); each run has a record of its own, which the RQ job names in its meta.
AUTO_RETRAIN_JOB_ID = "tagflow-auto-retrain"
RECORD_META = "record"
# A record is written before its job is queued: one younger than this whose job Redis does
# not have yet may be being queued now, and is not taken for lost.
QUEUEING_S = 60

DEFAULT_LISTED = 50
MAX_LISTED = 500


class JobAccepted(BaseModel):
    """The answer to a request that queued a job."""

    job_id: str


class JobPublic(BaseModel):
    """A background job as the API reports it."""

    job_id: str
    status: JobState
    result: Any = None
    error: str | None = None

    @field_validator("result", "error")
    @classmethod
    def _showable(cls, value: Any) -> Any:
        # A lone surrogate in a result (a file name that is not UTF-8, recorded by a job run
        # before the edges refused one) is shown escaped, not a 500 for the whole answer.
        return showable(value)


class JobListed(JobPublic):
    """A recorded job as GET /jobs lists it: what it is and when it ran."""

    description: str
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None


class JobList(BaseModel):
    """GET /jobs: recorded jobs, newest first."""

    jobs: list[JobListed]


_STATES = {
    JobStatus.STARTED: JobState.STARTED,
    JobStatus.FINISHED: JobState.FINISHED,
    JobStatus.FAILED: JobState.FAILED,
    JobStatus.STOPPED: JobState.FAILED,
    JobStatus.CANCELED: JobState.FAILED,
}


def enqueue_job(
    session: Session,
    *,
    queue: Queue,
    func: str,
    args: Sequence[str | bool] = (),
    description: str,
    retries: int = 0,
) -> str:
    """Record a job, then queue it with its result kept a week (GET /jobs/{id}), run again up
    to `retries` times if its worker is killed under it. UnavailableError without Redis, and
    then nothing is recorded: the caller is told to try again, not to wait for it."""
    record = record_job(session, func=func, args=args, description=description, retries=retries)
    try:
        _send(queue, record)
    except RedisError as exc:
        discard_record(session, record=record)
        raise redis_error(exc, doing=f"{description} not queued") from exc
    session.add(record)
    session.commit()
    return record.id


def redis_error(exc: RedisError, *, doing: str) -> RefusedError | UnavailableError:
    """What a failed Redis command means for the caller: Redis refusing the connection (a wrong
    password, a database it does not have) is a configuration error a retry repeats, said as
    `tagflow worker` says it; anything else an outage, to retry (503 with Retry-After)."""
    if is_redis_refusal(exc):
        return RefusedError(
            f"Redis refused the connection: {exc} (TAGFLOW_REDIS_URL, or the Redis server's "
            f"settings); {doing}; a retry will fail the same way until it is fixed"
        )
    return UnavailableError(f"Redis is unavailable, {doing}: {exc}")


def record_job(
    session: Session,
    *,
    func: str,
    args: Sequence[str | bool | float] = (),
    description: str,
    retries: int = 0,
) -> JobRecord:
    """Record a job about to be queued, under a new id; committed before Redis has it, as a
    worker may record its start at once. Once Redis has it, `mark_sent`; if it is not queued
    after all, `discard_record`."""
    record = JobRecord(
        id=str(uuid.uuid4()), func=func, args=list(args), description=description, retries=retries
    )
    session.add(record)
    session.commit()
    return record


def mark_sent(session: Session, *, record: JobRecord) -> None:
    """Record that Redis took `record`'s job (queued by its caller, as an automatic job is)."""
    record.sent_at = utcnow()
    record.sends += 1
    session.add(record)
    session.commit()


def discard_record(session: Session, *, record: JobRecord) -> None:
    """Delete the record of a job that was not queued after all (Redis away, or the automatic
    retraining's fixed id taken by a run queued already)."""
    session.delete(record)
    session.commit()


def is_automatic(record: JobRecord) -> bool:
    """Whether `record` is of a job the service queued by itself (AUTO_RETRAIN_DESCRIPTION)."""
    return record.description in (AUTO_RETRAIN_DESCRIPTION, PRUNE_DESCRIPTION)


def record_id_of(job: Job) -> str:
    """The id of `job`'s record: its own, but for a run of the automatic retraining, whose RQ
    id every run shares and which names its record in its meta."""
    return str(job.meta.get(RECORD_META, job.id))


def _queued_job(record: JobRecord, *, connection: Redis) -> Job | None:
    """`record`'s RQ job if Redis has it (for an automatic retraining, the job under its fixed
    id, if that is this record's run)."""
    rq_id = AUTO_RETRAIN_JOB_ID if record.description == AUTO_RETRAIN_DESCRIPTION else record.id
    try:
        job = Job.fetch(rq_id, connection=connection)
    except NoSuchJobError:
        return None
    return job if record_id_of(job) == record.id else None


def _send(queue: Queue, record: JobRecord) -> None:
    """Queue `record`'s job under its id, unless Redis has it already (another API process
    sent it again first); the record says when it was sent."""
    with contextlib.suppress(DuplicateJobError):
        queue.enqueue(
            record.func,
            *record.args,
            job_id=record.id,
            unique=True,  # atomic in Redis: two senders never queue the job twice
            job_timeout=JOB_TIMEOUT_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            description=record.description,
            retry=Retry(max=record.retries) if record.retries else None,
        )
    record.state = JobState.QUEUED
    record.sent_at = utcnow()
    record.sends += 1


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


def job_public(session: Session, *, connection: Redis, job_id: str) -> JobPublic:
    """The state of a job: Redis's while it has the job, else the job's record (a job Redis
    lost is queued again from it); a record's final state wins, since the worker writes it
    before RQ's own bookkeeping. NotFoundError for unknown (or expired) ids; UnavailableError
    when Redis cannot be asked about a job that has no record."""
    record = session.get(JobRecord, job_id)
    if record is not None and record.state in (JobState.FINISHED, JobState.FAILED):
        return _recorded(record)
    try:
        job = Job.fetch(job_id, connection=connection)
        state, result, error = _redis_state(job)
    except NoSuchJobError:
        if record is None:
            raise NotFoundError(f"job {job_id!r} does not exist (or its result expired)") from None
        return _recorded(record)
    except RedisError as exc:
        if record is None:
            raise redis_error(exc, doing="job state unknown") from exc
        return _recorded(record)
    return JobPublic(job_id=job_id, status=state, result=result, error=error)


def _redis_state(job: Job) -> tuple[JobState, Any, str | None]:
    """`job`'s state as RQ has it, with its result or its error."""
    state = _STATES.get(job.get_status(refresh=True), JobState.QUEUED)
    result = job.return_value() if state is JobState.FINISHED else None
    error = error_line(job.exc_info) if state is JobState.FAILED else None
    return state, result, error


def _recorded(record: JobRecord) -> JobPublic:
    return JobPublic(
        job_id=record.id, status=record.state, result=record.result, error=record.error
    )


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LISTED,
) -> list[JobListed]:
    """Recorded jobs, newest first (by when they were queued): only those in `state`, only
    those queued at or after `since`, at most `limit`. From the records alone, which the
    worker keeps up to date (an end RQ recorded on its own is copied within a redelivery
    check, `redeliver_lost_jobs`)."""
    query = select(JobRecord)
    if state is not None:
        query = query.where(JobRecord.state == state)
    if since is not None:
        query = query.where(col(JobRecord.created_at) >= as_utc(since).astimezone(UTC))
    query = query.order_by(col(JobRecord.created_at).desc(), col(JobRecord.id).desc()).limit(limit)
    return [_listed(record) for record in session.exec(query)]


def _listed(record: JobRecord) -> JobListed:
    return JobListed(
        job_id=record.id,
        status=record.state,
        result=record.result,
        error=record.error,
        description=record.description,
        created_at=as_utc(record.created_at),
        started_at=as_utc(record.started_at) if record.started_at else None,
        ended_at=as_utc(record.ended_at) if record.ended_at else None,
    )


# --- the worker's side of a recorded job ------------------------------------------------------


def job_started(session: Session, *, job_id: str) -> JobRecord | None:
    """Record that a worker runs the job; its record (None for a job with none: one queued
    before records were kept). A record already finished is left as it is: its worker died
    after recording that and before RQ knew, and RQ runs it again."""
    record = session.get(JobRecord, job_id)
    if record is None or record.state is JobState.FINISHED:
        return record
    record.state = JobState.STARTED
    record.started_at = utcnow()
    session.add(record)
    session.commit()
    return record


def job_ended(
    session: Session, *, job_id: str, result: Any = None, error: str | None = None
) -> None:
    """Record a job's end: finished with `result` (stored as JSON), or failed with `error`."""
    record = session.get(JobRecord, job_id)
    if record is None:
        return
    record.state = JobState.FAILED if error is not None else JobState.FINISHED
    record.result = None if error is not None else _as_json(result)
    record.error = error
    record.ended_at = utcnow()
    session.add(record)
    session.commit()


def job_retrying(session: Session, *, job_id: str, error: str) -> None:
    """Record that a try of the job failed with `error` and RQ runs it again later (the
    prune's retries): queued again, the try's error kept until the job ends."""
    record = session.get(JobRecord, job_id)
    if record is None:
        return
    record.state = JobState.QUEUED
    record.error = error
    session.add(record)
    session.commit()


def copy_rq_end(session: Session, *, job: Job) -> None:
    """Copy to `job`'s record the final state RQ recorded on its own (a job whose worker was
    killed once more than its retries allow, failed by RQ's maintenance), if RQ has the job
    ended and the record is still open."""
    state, result, error = _redis_state(job)
    if state not in (JobState.FINISHED, JobState.FAILED):
        return
    record = session.get(JobRecord, record_id_of(job))
    if record is not None and record.state in (JobState.QUEUED, JobState.STARTED):
        job_ended(session, job_id=record.id, result=result, error=error)


def _as_json(value: Any) -> Any:
    """`value` as JSON both databases store: NaN and the infinities (a metric of an empty set;
    PostgreSQL's json refuses them) become null, and what JSON has no type for, its text."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)


# --- jobs Redis lost -------------------------------------------------------------------------

# How many times one job is sent to Redis at most (its first send and the redeliveries after
# Redis lost it). A job whose every run takes its worker down, and Redis with it (the machine
# out of memory), was sent again after each loss without end; with RQ's retries, it has then
# been tried many times, and the cause wants a person.
MAX_SENDS = 5

# A started job that Redis lost may still run on a worker that lost Redis meanwhile; RQ cuts
# it at its timeout, so once that has passed (and a claim's lapse) it runs nowhere.
STILL_RUNNING_S = JOB_TIMEOUT_S + 60


def _may_still_run(record: JobRecord) -> bool:
    """Whether a worker may still be running `record`'s job (it started within the timeout;
    an automatic job's may be the prune's, the longest)."""
    started = record.started_at
    still_running_s = LONGEST_JOB_TIMEOUT_S + 60 if is_automatic(record) else STILL_RUNNING_S
    return (
        record.state is JobState.STARTED
        and started is not None
        and as_utc(started) > utcnow() - timedelta(seconds=still_running_s)
    )


def _being_queued(record: JobRecord) -> bool:
    """Whether `record`'s job may be being queued now (recorded, not yet in Redis)."""
    created = as_utc(record.created_at)
    return record.sends == 0 and created > utcnow() - timedelta(seconds=QUEUEING_S)


def redeliver_lost_jobs(session: Session, *, queue: Queue) -> int:
    """Queue again the recorded jobs Redis no longer has (a restart, a flush, a failover);
    how many. Queued ones at once; started ones once their run is surely over (its worker
    died too). Jobs Redis has are left to it, but a final state RQ recorded on its own (a job
    whose worker was killed once more than its retries allow) is copied to the record, which
    outlives Redis's week. A job Redis lost MAX_SENDS times is not sent again: failed.

    An automatic job Redis lost is recorded as failed and not sent again: its trigger queues
    the next (see AUTO_RETRAIN_DESCRIPTION); sent again as well, a retraining would run twice."""
    records = session.exec(
        select(JobRecord).where(col(JobRecord.state).in_([JobState.QUEUED, JobState.STARTED]))
    ).all()
    sent: list[str] = []
    for record in records:
        job = _queued_job(record, connection=queue.connection)
        if job is not None:
            copy_rq_end(session, job=job)
            continue
        if _may_still_run(record):
            continue
        if is_automatic(record):
            if not _being_queued(record):
                _lost_automatic(session, record=record)
            continue
        if record.sends >= MAX_SENDS:
            _give_up(session, record=record)
            continue
        _send(queue, record)
        session.add(record)
        session.commit()
        sent.append(record.id)
    if sent:
        log.warning(
            "%d job(s) that Redis no longer has (restarted or flushed?) queued again: %s",
            len(sent),
            ", ".join(sent),
        )
    return len(sent)


def _lost_automatic(session: Session, *, record: JobRecord) -> None:
    """Record as failed an automatic job Redis lost: its trigger queues the next."""
    job_ended(
        session,
        job_id=record.id,
        error=(
            "Redis lost this job (restarted or flushed while it was queued or running); "
            "not queued again from its record: the service queues the next one itself"
        ),
    )
    log.warning(
        "automatic job %s (%s) lost by Redis: recorded as failed", record.id, record.description
    )


def _give_up(session: Session, *, record: JobRecord) -> None:
    """Record as failed a job Redis lost too often to send it again (see MAX_SENDS)."""
    job_ended(
        session,
        job_id=record.id,
        error=(
            f"Redis lost this job {record.sends} times (restarted or flushed while it was "
            "queued or running: its run may take its worker and Redis down, out of memory?); "
            "not queued again, queue it again once the cause is found"
        ),
    )
    log.error(
        "job %s (%s) lost by Redis %d times: recorded as failed, not queued again",
        record.id,
        record.description,
        record.sends,
    )
