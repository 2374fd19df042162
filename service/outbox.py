"""Relays outbox rows to RQ. Rows are marked sent only after Redis accepted the job, and done
only once the worker has processed them: a job Redis lost before then is sent again, up to
`MAX_SENDS` times; then the row is stopped until an operator sends it again (`resend_stopped`)."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job
from sqlalchemy import ColumnElement, Select, delete, update
from sqlmodel import Session, col, func, select

from service.crud.predictions import PRUNE_BATCH
from service.db import bound_lock_waits
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
# How many times one row is handed to RQ at most (its first send and the sends after Redis lost
# its job). A payload whose run takes its worker and Redis down (out of memory) was sent again
# after each loss without end and without a word; after this many the cause wants a person.
MAX_SENDS = 5


def pending_count(session: Session) -> int:
    return session.exec(
        select(func.count()).select_from(OutboxItem).where(col(OutboxItem.sent_at).is_(None))
    ).one()


def stopped_count(session: Session) -> int:
    """Rows the relay gave up on (see `MAX_SENDS`), waiting for `tagflow db resend-outbox`."""
    return session.exec(
        select(func.count()).select_from(OutboxItem).where(col(OutboxItem.stopped_at).is_not(None))
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
            update(OutboxItem)
            .where(col(OutboxItem.id).in_(ids))
            .values(sent_at=now, job_id=job_id, sends=col(OutboxItem.sends) + 1)
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
    counted it finished, and Redis keeps it for its result's TTL after that (500 s).

    A row already sent `MAX_SENDS` times is stopped instead (`_stop_lost`). Each row put back or
    stopped names the lost job in its `last_error`, for the worker's log of its last run."""
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
    on_lost = (col(OutboxItem.job_id).in_(lost), col(OutboxItem.done_at).is_(None))
    stopped = _stop_lost(session, on_lost=on_lost)
    result = session.execute(
        update(OutboxItem)
        .where(*on_lost)
        .values(sent_at=None, job_id=None, last_error=_lost_job_error())
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
    for row_id, kind, sends, last_error in stopped:
        log.error(
            "outbox row %d (%s) stopped after %d sends, its job lost each time: not sent again "
            "until tagflow db resend-outbox %d; last error: %s",
            row_id,
            kind,
            sends,
            row_id,
            last_error,
        )
    return count


def _lost_job_error() -> ColumnElement[str]:
    """The `last_error` of a row whose job Redis lost, naming the job (the value before the
    UPDATE that clears it: SET reads the old row)."""
    return (
        "job "
        + col(OutboxItem.job_id)
        + " lost: Redis no longer had it (restarted or flushed? or its run took Redis down)"
    )


def _stop_lost(
    session: Session, *, on_lost: Sequence[ColumnElement[bool]]
) -> list[tuple[int, str, int, str]]:
    """Stop the rows matching `on_lost` (sent, not done, job lost) already sent `MAX_SENDS`
    times: never sent again automatically. Their id, kind, sends and last error, for the log:
    RETURNING gives the rows this UPDATE changed, so another API process stopping them at the
    same time does not log them twice."""
    stopped = session.execute(
        update(OutboxItem)
        .where(*on_lost, col(OutboxItem.sends) >= MAX_SENDS)
        .values(job_id=None, stopped_at=utcnow(), last_error=_lost_job_error())
        .returning(OutboxItem.id, OutboxItem.kind, OutboxItem.sends, OutboxItem.last_error)
    ).all()
    return [(row_id, kind, sends, last_error) for row_id, kind, sends, last_error in stopped]


def resend_stopped(session: Session, *, ids: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """Put the stopped rows `ids` (all stopped rows when None) back for the relay, which sends
    them at its next pass, their count of sends from 0 again; the id and kind of each, in
    order. Rows not stopped are left as they are."""
    query = update(OutboxItem).where(col(OutboxItem.stopped_at).is_not(None))
    if ids is not None:
        query = query.where(col(OutboxItem.id).in_(ids))
    resent = session.execute(
        query.values(stopped_at=None, sends=0, sent_at=None, job_id=None).returning(
            OutboxItem.id, OutboxItem.kind
        )
    ).all()
    session.commit()
    return sorted((row_id, kind) for row_id, kind in resent)


def batches(rows: Sequence[OutboxItem]) -> Iterator[tuple[str, list[OutboxItem]]]:
    """Consecutive rows of one kind, at most `REVIEW_BATCH` at a time, in order; a row sent
    before (its job lost) goes alone. One payload whose run takes its worker and Redis down
    then loses only its own job from its second send on, and the cap (`MAX_SENDS`) stops it
    alone: sent again together, the up to `REVIEW_BATCH` rows of its first job were lost with
    it each time and stopped with it. What a Redis restart lost goes back a job a row, which
    costs the relay more CPU per row (see `relay`) on that rare occasion only."""
    for (kind, resent), run in itertools.groupby(rows, key=lambda row: (row.kind, row.sends > 0)):
        same = list(run)
        size = 1 if resent else REVIEW_BATCH
        for start in range(0, len(same), size):
            yield kind, same[start : start + size]


def _prunable(before: datetime) -> Select[tuple[int]]:
    """Ids of the rows done before `before` and not stopped, oldest first. Rows pending, in
    flight (sent, not done) or stopped are still owed to the labelling queue, whatever their
    age; a row done is owed nothing (its work is in a review task or a label by then)."""
    return (
        select(OutboxItem.id)
        .where(col(OutboxItem.done_at) < before, col(OutboxItem.stopped_at).is_(None))
        .order_by(col(OutboxItem.id))
    )


def prune_done(
    session: Session,
    *,
    before: datetime,
    dry_run: bool = False,
    batch: int = PRUNE_BATCH,
    lock_timeout_s: float | None = None,
) -> int:
    """Delete the rows done before `before` (see `_prunable`), `batch` rows per transaction:
    every review item, label check and user report passes through the outbox, and the table
    grew for ever. How many went (or, `dry_run`, would go). With `lock_timeout_s`, a lock held
    elsewhere is waited for that long at most in each batch (PostgreSQL), then it stops with
    an outage, the batches before deleted, as the prediction prune does."""
    bound_lock_waits(session, seconds=lock_timeout_s)
    if dry_run:
        return session.exec(select(func.count()).select_from(_prunable(before).subquery())).one()
    deleted = 0
    # In id order: done rows are the oldest, so a walk of the primary key meets them first.
    while ids := list(session.exec(_prunable(before).limit(batch))):
        gone = session.exec(delete(OutboxItem).where(col(OutboxItem.id).in_(ids)))
        session.commit()
        deleted += int(gone.rowcount)
        bound_lock_waits(session, seconds=lock_timeout_s)  # the bound lasts one transaction
    return deleted
