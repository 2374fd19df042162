"""Relays outbox rows to RQ. Rows are marked sent only after Redis accepted the job."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from rq import Queue, Retry
from sqlmodel import Session, col, func, select

from service.entities import OutboxItem
from service.entities.common import utcnow

log = logging.getLogger(__name__)

LABELING_QUEUE = "labeling"
TRAINING_QUEUE = "training"
JOBS = {"review": "workers.review_jobs.process_review"}
# Backoff for failed labelling jobs: RQ re-queues them after these delays, then keeps the
# job in its failed registry (visible in /review/stats and `rq info`), never drops it.
REVIEW_RETRY = Retry(max=5, interval=[2, 10, 30, 120, 600])


def pending_count(session: Session) -> int:
    return session.exec(
        select(func.count()).select_from(OutboxItem).where(col(OutboxItem.sent_at).is_(None))
    ).one()


def relay(session: Session, *, queue: Queue, limit: int = 500) -> int:
    """Enqueue unsent rows in order; stop at the first Redis error (they stay for next time)."""
    rows = session.exec(
        select(OutboxItem)
        .where(col(OutboxItem.sent_at).is_(None))
        .order_by(col(OutboxItem.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    sent = 0
    for row in rows:
        try:
            queue.enqueue(JOBS[row.kind], row.payload, retry=REVIEW_RETRY, job_timeout=120)
        except RedisError as exc:
            row.attempts += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:500]
            session.add(row)
            log.warning("outbox: Redis unavailable (%s); %d rows wait", exc, len(rows) - sent)
            break
        row.sent_at = utcnow()
        session.add(row)
        sent += 1
    session.commit()
    return sent
