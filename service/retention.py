"""Automatic retention of the prediction log and of done outbox rows, for deployments
without cron.

With `TAGFLOW_RETENTION_DAYS` set, the API's watch loop asks Redis once a day, across every API
process, for the right to enqueue one prune job (`SET NX` with a day's expiry), and a worker
runs it: the deletes never run in the process that answers requests. Each prune is recorded
(GET /jobs lists it), as an admin's job is. `tagflow db prune` does
the same by hand. A prune that fails (a lock held elsewhere past its bound, the database
down a moment) is tried again later the same day (`PRUNE_RETRY`), not left to the next day's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from service.crud.predictions import prune_predictions
from service.db import PRUNE_LOCK_TIMEOUT_S, is_lock_timeout
from service.entities import JobRecord
from service.entities.common import utcnow
from service.jobs import (
    PRUNE_DESCRIPTION,
    PRUNE_TIMEOUT_S,
    discard_record,
    mark_sent,
    record_job,
)
from service.outbox import prune_done

log = logging.getLogger(__name__)

PRUNE_JOB = "workers.maintenance_jobs.prune"
PRUNE_KEY = "tagflow:retention:last-enqueued"
PRUNE_EVERY = timedelta(days=1)
# A failed prune is queued again 5 min, 30 min and 2 h after its failures (the worker's RQ
# scheduler does it): a transient database error no longer costs the day's prune. Even with
# every try cut at PRUNE_TIMEOUT_S, the last ends within 7 h, long before the next day's.
PRUNE_RETRY = Retry(max=3, interval=[300, 1800, 7200])


def maybe_enqueue_prune(
    session: Session, *, queue: Queue, retention_days: float, every: timedelta = PRUNE_EVERY
) -> str | None:
    """Record and enqueue the prune job, retried on failure (`PRUNE_RETRY`), if none was
    enqueued within `every` (by any process, in `queue`'s Redis); its id, the record's (GET
    /jobs lists it). None when retention is off or it is not due. One not enqueued after all
    (the database or Redis failing, raised) leaves the prune due at the next watch tick."""
    if not retention_days:
        return None
    stamp = utcnow().isoformat()
    if not queue.connection.set(PRUNE_KEY, stamp, nx=True, ex=int(every.total_seconds())):
        return None
    try:
        record = _record_and_enqueue(session, queue=queue, retention_days=retention_days)
    except Exception:
        # The day's key would otherwise hold off the next try for a day.
        _still_due(queue.connection)
        raise
    mark_sent(session, record=record)
    log.info(
        "retention: prune of predictions and done outbox rows older than %g days enqueued",
        retention_days,
    )
    return record.id


def _record_and_enqueue(session: Session, *, queue: Queue, retention_days: float) -> JobRecord:
    """Record the prune job, then enqueue it under its record's id; the record goes if Redis
    refuses it."""
    record = record_job(
        session,
        func=PRUNE_JOB,
        args=(retention_days,),
        description=PRUNE_DESCRIPTION,
        retries=PRUNE_RETRY.max,
    )
    try:
        queue.enqueue(
            PRUNE_JOB,
            retention_days,
            job_id=record.id,
            job_timeout=PRUNE_TIMEOUT_S,
            retry=PRUNE_RETRY,
            description=PRUNE_DESCRIPTION,
        )
    except RedisError:
        discard_record(session, record=record)
        raise
    return record


def _still_due(redis: Redis) -> None:
    """Delete the day's key of a prune that was not enqueued, so that the next tick tries."""
    try:
        redis.delete(PRUNE_KEY)
    except RedisError as exc:  # a Redis that is away: its key may be lost with it anyway
        log.warning("retention: the prune was not enqueued and its day's key stays: %s", exc)


def prune_older_than(
    engine: Engine, *, days: float, lock_timeout_s: float = PRUNE_LOCK_TIMEOUT_S
) -> dict[str, int]:
    """Delete logged predictions older than `days` (reported ones stay), then the outbox rows
    done before then (`outbox.prune_done`); counts by table (`outbox_rows` for the outbox).

    A lock held elsewhere past `lock_timeout_s` (PostgreSQL) stops it with the database's
    error, the batches before it deleted: without the bound, a migration or a transaction left
    open on the table held the worker, and every job behind the prune, for as long."""
    before = utcnow() - timedelta(days=days)
    with Session(engine) as session:
        with _logging_lock_timeout("predictions", lock_timeout_s):
            gone = prune_predictions(session, before=before, lock_timeout_s=lock_timeout_s)
        with _logging_lock_timeout("outbox", lock_timeout_s):
            gone["outbox_rows"] = prune_done(session, before=before, lock_timeout_s=lock_timeout_s)
    log.info(
        "retention: deleted %d predictions, %d shadow scores and %d done outbox rows older than %s",
        gone["predictions"],
        gone["shadow_predictions"],
        gone["outbox_rows"],
        before.isoformat(timespec="minutes"),
    )
    return gone


@contextmanager
def _logging_lock_timeout(table: str, lock_timeout_s: float) -> Iterator[None]:
    """Log a lock on `table` held elsewhere past `lock_timeout_s` as such (the error goes on)."""
    try:
        yield
    except OperationalError as exc:
        if is_lock_timeout(exc):
            log.error(
                "retention: a lock another transaction holds on the %s was not released "
                "within %g s; the prune stopped (the next one goes on)",
                table,
                lock_timeout_s,
            )
        raise
