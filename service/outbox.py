"""Relays outbox rows to RQ. Rows are marked sent only after Redis accepted the job, and done
only once the worker has processed them: a job Redis lost before then is sent again."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator, Sequence

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job
from sqlalchemy import update
from sqlmodel import Session, col, func, select

from service.entities import OutboxItem
from service.entities.common import utcnow
from service.jobs import REVIEW_JOB_TIMEOUT_S
from service.logs import RepeatedFailures

log = logging.getLogger(__name__)

LABELING_QUEUE = "labeling"
TRAINING_QUEUE = "training"
# One job per kind and run of at most REVIEW_BATCH rows: RQ's own cost per job (enqueue here,
# dequeue and bookkeeping in the worker) is paid per batch, not per prediction.
JOBS = {"review": "workers.review_jobs.process_reviews"}
REVIEW_BATCH = 100
# The key of a relayed payload that names its outbox row.
OUTBOX_ID = "outbox_id"
# Backoff for failed labelling jobs: RQ re-queues them after these delays, then keeps the
# job in its failed registry (visible in /review/stats and `rq info`), never drops it.
REVIEW_RETRY = Retry(max=5, interval=[2, 10, 30, 120, 600])


def pending_count(session: Session) -> int:
    return session.exec(
        select(func.count()).select_from(OutboxItem).where(col(OutboxItem.sent_at).is_(None))
    ).one()


def relay_failures() -> RepeatedFailures:
    """How the relay has been failing, for a process that relays again and again: a Redis
    outage is then a line when it starts, a line a minute, and one when it ends."""
    return RepeatedFailures("outbox relay to Redis", log)


def relay(
    session: Session, *, queue: Queue, limit: int = 500, failures: RepeatedFailures | None = None
) -> int:
    """Enqueue up to `limit` unsent rows, in order, in one Redis transaction; on a Redis error
    none is marked sent (they all wait for the next try) and the first row records it.
    `failures` (from `relay_failures`) logs a Redis outage once, not at every try: the API
    relays after every log flush, four times a second, and logged a warning at each.

    Rows go as jobs of up to `REVIEW_BATCH` payloads each, in one MULTI/EXEC, and one UPDATE
    marks them sent: 50-90 us of CPU per row here instead of 400-1,000 with a job and a round
    trip per row, on a thread that shares the GIL with the request path.
    """
    rows = session.exec(
        select(OutboxItem)
        .where(col(OutboxItem.sent_at).is_(None))
        .order_by(col(OutboxItem.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    sent = [(uuid.uuid4().hex, kind, batch) for kind, batch in batches(rows)]
    jobs = [
        Queue.prepare_data(
            JOBS[kind],
            # Each payload names its row, for the worker to mark it done (`mark_done`).
            args=([{**row.payload, OUTBOX_ID: row.id} for row in batch],),
            job_id=job_id,
            retry=REVIEW_RETRY,
            timeout=REVIEW_JOB_TIMEOUT_S,
        )
        for job_id, kind, batch in sent
    ]
    try:
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
    except RedisError as exc:
        rows[0].attempts += 1
        rows[0].last_error = f"{type(exc).__name__}: {exc}"[:500]
        session.add(rows[0])
        session.commit()
        failures = failures or relay_failures()
        failures.failed(exc, now=time.monotonic(), detail=f"; {len(rows)} rows wait")
        return 0
    now = utcnow()
    for job_id, _, batch in sent:
        ids = [row.id for row in batch]
        session.execute(
            update(OutboxItem).where(col(OutboxItem.id).in_(ids)).values(sent_at=now, job_id=job_id)
        )
    session.commit()
    if failures is not None:
        failures.succeeded(detail=f"; {len(rows)} rows sent")
    return len(rows)


def mark_done(session: Session, *, ids: Sequence[int]) -> None:
    """Record that the worker has processed the payloads of these rows: no longer sent again
    if their job goes missing."""
    if ids:
        session.execute(
            update(OutboxItem).where(col(OutboxItem.id).in_(ids)).values(done_at=utcnow())
        )
        session.commit()


def redeliver_lost(session: Session, *, queue: Queue) -> int:
    """Put back for the relay the rows sent but not done whose job Redis no longer has; how
    many. Redis lost them: a restart (the machine's Redis keeps nothing on disk), a flush, a
    failover to a replica behind. Their review items and user reports then never reached the
    queue (a QA pass restarting Redis under load lost 131 of 1,006).

    A job Redis still has is waiting, running, retrying or failed (kept in the failed
    registry, not sent twice); a job the worker finished is done, its rows marked before RQ
    counted it finished, and Redis keeps it for its result's TTL after that (500 s)."""
    job_ids = session.exec(
        select(OutboxItem.job_id)
        .where(col(OutboxItem.job_id).is_not(None), col(OutboxItem.done_at).is_(None))
        .distinct()
    ).all()
    if not job_ids:
        return 0
    with queue.connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(Job.key_for(job_id))
        found = pipe.execute()
    lost = [job_id for job_id, exists in zip(job_ids, found, strict=True) if not exists]
    if not lost:
        return 0
    # Only rows still not done and still on a lost job: another API process may have put them
    # back and sent them again meanwhile.
    result = session.execute(
        update(OutboxItem)
        .where(col(OutboxItem.job_id).in_(lost), col(OutboxItem.done_at).is_(None))
        .values(sent_at=None, job_id=None)
    )
    session.commit()
    count = result.rowcount
    if count:
        log.warning(
            "outbox: %d review item(s) sent in %d job(s) that Redis no longer has "
            "(restarted or flushed?) go to the labelling queue again",
            count,
            len(lost),
        )
    return count


def batches(rows: Sequence[OutboxItem]) -> Iterator[tuple[str, list[OutboxItem]]]:
    """Consecutive rows of one kind, at most `REVIEW_BATCH` at a time, in order."""
    for kind, run in itertools.groupby(rows, key=lambda row: row.kind):
        same = list(run)
        for start in range(0, len(same), REVIEW_BATCH):
            yield kind, same[start : start + REVIEW_BATCH]
