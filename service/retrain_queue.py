"""Queueing a retraining for a worker: by hand (`POST /models/retrain`, `tagflow retrain
--enqueue`), recorded as an admin's job, or automatically once enough new labels have come,
one run at a time under a fixed RQ id, each run with a record of its own (GET /jobs lists
both). The job itself is `workers.training_jobs.retrain`, which runs `service.retraining`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from sqlmodel import Session

from service.config import Settings
from service.crud import snapshots as snapshots_crud
from service.entities.common import utcnow
from service.jobs import (
    AUTO_RETRAIN_DESCRIPTION,
    AUTO_RETRAIN_JOB_ID,
    JOB_TIMEOUT_S,
    RECORD_META,
    copy_rq_end,
    discard_record,
    enqueue_job,
    mark_sent,
    record_job,
)

log = logging.getLogger(__name__)

RETRAIN_JOB = "workers.training_jobs.retrain"
# A retraining whose worker was killed (kill -9, the OOM killer, a stop that cut it short) is
# run again, at most this many times: it is idempotent but for the candidate it registers.
# One that raises is not (workers.training_jobs): its data or setup would fail it again.
RETRAIN_RETRIES = 2
# The automatic job has a fixed id and RQ refuses a second one while it exists: never a second
# while one is queued, running or waiting for its retry. Once it has ended, labels after its
# end free the id for the next (`_release_ended_auto_job`): the first label after a finished
# one, `retrain_after_labels` of them after a failed one (a failure late in a run, such as a
# full disk, would otherwise cost a whole retraining per label); else the id is kept a few
# minutes after finishing and an hour after failing (a broken setup is retried hourly, not at
# every watch tick). Each run has a record of its own (GET /jobs), named in the job's meta.
AUTO_RESULT_TTL_S = 300
AUTO_FAILURE_TTL_S = 3600
_ENDED = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def enqueue_retrain(
    session: Session, *, queue: Queue, reason: str = "manual", force: bool = False
) -> str:
    """Record and queue a retraining (run again if its worker is killed, queued again if Redis
    loses it; `force`: even with nothing new since production)."""
    # `force` is passed only when set: a worker not yet upgraded runs the others as before.
    args = (reason, True) if force else (reason,)
    return enqueue_job(
        session,
        queue=queue,
        func=RETRAIN_JOB,
        args=args,
        description=f"retrain ({reason})",
        retries=RETRAIN_RETRIES,
    )


def _ended_at(job: Job, *, connection: Redis, now: datetime) -> datetime | None:
    """When `job` ended, on the clock of `now` (this process's, which stamps labels too): its
    latest result's time (a failure recorded by maintenance, for a killed worker, has no end
    time of its own). RQ takes that time from Redis's clock (the id of the result's entry in
    its stream), so it is moved by how far Redis's clock is from this one: compared as it was
    with labels' times, a Redis clock minutes behind counted labels given before a failure as
    labels since it, and the failed retraining was queued again with nothing new."""
    result = job.latest_result()
    if result is None:
        return job.ended_at or job.enqueued_at
    seconds, micros = connection.time()
    redis_now = datetime.fromtimestamp(seconds + micros / 1e6, UTC)
    return result.created_at - (redis_now - now)


def _release_ended_auto_job(
    session: Session, *, connection: Redis, after_failure: int, now: datetime | None = None
) -> None:
    """Delete the last automatic retraining once it has ended and labels have come since (one
    after a finished job, `after_failure` after a failed one), so that its id takes the next
    one: RQ keeps an ended job, and so its id, for its result's or failure's TTL, and a failed
    one blocked automatic retraining for an hour. Watched: of API processes releasing it at
    once, one deletes it and the others find it changed. `now`: this process's time (tests
    give another, as a clock that differs from Redis's)."""
    try:
        with connection.pipeline() as pipe:
            pipe.watch(Job.key_for(AUTO_RETRAIN_JOB_ID))
            job = Job.fetch(AUTO_RETRAIN_JOB_ID, connection=connection)
            status = job.get_status()
            if status not in _ENDED:
                return
            needed = 1 if status == JobStatus.FINISHED else after_failure
            ended = _ended_at(job, connection=connection, now=now or utcnow())
            if snapshots_crud.labels_since(session, since=ended) < needed:
                return
            # Its record outlives it: an end RQ recorded on its own (a worker killed once more
            # than its retries allow) goes to the record before the job goes.
            copy_rq_end(session, job=job)
            pipe.multi()
            job.delete(pipeline=pipe)
            pipe.execute()
    except (NoSuchJobError, InvalidJobOperation, WatchError):  # gone or changed meanwhile
        return


def maybe_enqueue_auto_retrain(session: Session, *, settings: Settings, queue: Queue) -> str | None:
    """Queue one automatic retraining once `retrain_after_labels` new labels exist since the
    latest snapshot; never a second while one is queued or running, and after one has ended,
    not before a label has come since (`retrain_after_labels` after a failed one). Each run is
    recorded (GET /jobs lists it). Returns the RQ job id (AUTO_RETRAIN_JOB_ID)."""
    if settings.retrain_after_labels <= 0:
        return None
    new_labels = snapshots_crud.labels_since_latest_snapshot(session)
    if new_labels < settings.retrain_after_labels:
        return None
    try:
        _release_ended_auto_job(
            session, connection=queue.connection, after_failure=settings.retrain_after_labels
        )
        # Held (queued, running, ended too recently): no record written and deleted again at
        # every watch tick of every API process. The enqueue below still decides a race.
        if queue.connection.exists(Job.key_for(AUTO_RETRAIN_JOB_ID)):
            return None
        record_id = _enqueue_auto(session, queue=queue)
    except DuplicateJobError:
        return None
    except RedisError as exc:
        log.warning(
            "automatic retraining due (%d new labels) but Redis is unavailable: %s", new_labels, exc
        )
        return None
    log.info(
        "%d new labels since the last snapshot: automatic retraining queued (job %s)",
        new_labels,
        record_id,
    )
    return AUTO_RETRAIN_JOB_ID


def _enqueue_auto(session: Session, *, queue: Queue) -> str:
    """Record a run of the automatic retraining and queue it under the fixed id (RQ refuses it,
    DuplicateJobError, while a run holds the id; the record then goes); its record's id."""
    record = record_job(
        session,
        func=RETRAIN_JOB,
        args=("auto",),
        description=AUTO_RETRAIN_DESCRIPTION,
        retries=RETRAIN_RETRIES,
    )
    try:
        queue.enqueue(
            RETRAIN_JOB,
            "auto",
            job_id=AUTO_RETRAIN_JOB_ID,
            unique=True,
            retry=Retry(max=RETRAIN_RETRIES),
            job_timeout=JOB_TIMEOUT_S,
            result_ttl=AUTO_RESULT_TTL_S,
            failure_ttl=AUTO_FAILURE_TTL_S,
            description=AUTO_RETRAIN_DESCRIPTION,
            meta={RECORD_META: record.id},
        )
    except (DuplicateJobError, RedisError):
        discard_record(session, record=record)
        raise
    mark_sent(session, record=record)
    return record.id
