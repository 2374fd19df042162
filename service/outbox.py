"""Relays outbox rows to RQ. Rows are marked sent only after Redis accepted the job."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence

from redis.exceptions import RedisError
from rq import Queue, Retry
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
    jobs = [
        Queue.prepare_data(
            JOBS[kind],
            args=([row.payload for row in batch],),
            retry=REVIEW_RETRY,
            timeout=REVIEW_JOB_TIMEOUT_S,
        )
        for kind, batch in batches(rows)
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
    ids = [row.id for row in rows]
    session.execute(update(OutboxItem).where(col(OutboxItem.id).in_(ids)).values(sent_at=utcnow()))
    session.commit()
    if failures is not None:
        failures.succeeded(detail=f"; {len(rows)} rows sent")
    return len(rows)


def batches(rows: Sequence[OutboxItem]) -> Iterator[tuple[str, list[OutboxItem]]]:
    """Consecutive rows of one kind, at most `REVIEW_BATCH` at a time, in order."""
    for kind, run in itertools.groupby(rows, key=lambda row: row.kind):
        same = list(run)
        for start in range(0, len(same), REVIEW_BATCH):
            yield kind, same[start : start + REVIEW_BATCH]
