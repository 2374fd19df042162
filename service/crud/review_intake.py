"""The review queue's intake: a new task for content that needs a person, and another arrival
or user report counted on the open task of the same content, each setting the task's place in
the queue (`task_priority`).

One open task per content is settled by the database: the unique `open_key` (NULL once
labelled); a create that loses the race returns None and the caller bumps the winner.
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.entities import Feedback, FeedbackStatus
from service.entities.review import ACTIVE, ReviewReason, ReviewStatus, ReviewTask
from service.ml import priority as prio

log = logging.getLogger(__name__)

SKIP_STEP = 0.05  # priority lost per skip: a skipped item sinks a little, it does not vanish
MAX_ARRIVAL_KEYS = 100  # duplicate deliveries arrive close together: the latest keys suffice


def task_priority(task: ReviewTask) -> float:
    """The queue position of a task from its stored terms."""
    return (
        prio.priority(
            uncertainty=task.uncertainty,
            reports=task.reports,
            arrivals=task.arrivals,
            penalty=task.diversity_penalty,
            audit=task.reason == ReviewReason.AUDIT,
        )
        - SKIP_STEP * task.skips
    )


# How many of the tasks just ahead of a new one its diversity penalty looks at.
AHEAD_SCREENED = 256


def embeddings_ahead(
    session: Session, *, priority: float, limit: int = AHEAD_SCREENED
) -> list[bytes]:
    """Embeddings of the open/leased tasks ranked just above `priority`, the nearest `limit`
    of them: the items a reviewer sees right before this one, which is where a near-duplicate
    costs attention. (Reading all of them made each new task read the whole queue.)"""
    return list(
        session.exec(
            select(ReviewTask.embedding)
            .where(
                col(ReviewTask.status).in_(ACTIVE),
                col(ReviewTask.priority) > priority,
                col(ReviewTask.embedding).is_not(None),
            )
            .order_by(col(ReviewTask.priority))
            .limit(limit)
        )
    )


def create_task(
    session: Session, *, task: ReviewTask, feedback_id: int | None = None
) -> ReviewTask | None:
    """Insert a new open task, with the user report `feedback_id` it reviews linked to it in
    the same transaction (`_link_feedback`); None when an open task for the same content won
    the race."""
    task.open_key = task.text_hash
    task.status = ReviewStatus.OPEN
    task.priority = task_priority(task)
    session.add(task)
    try:
        session.flush()
        assert task.id is not None
        _link_feedback(session, feedback_id=feedback_id, task_id=task.id)
        session.commit()
    except IntegrityError:
        session.rollback()
        log.info("open task for %s created concurrently; bumping it", task.text_hash[:12])
        return None
    session.refresh(task)
    return task


def bump_task(
    session: Session,
    *,
    text_hash: str,
    user_report: bool,
    arrival_key: str,
    feedback_id: int | None = None,
) -> tuple[ReviewTask, bool] | None:
    """Count another arrival (or user report) on the open task of this content, if any, and
    link the user report `feedback_id` to it (`_link_feedback`).

    Returns the task and whether it was counted: a delivery already counted (same
    `arrival_key`) is not counted twice. The first statement locks the row (the database on
    SQLite) until the commit, so concurrent bumps are serialised and never lost, and a label
    of the task waits for the link: it settles the report with the task's others.
    """
    locked = session.exec(
        update(ReviewTask)
        .where(col(ReviewTask.open_key) == text_hash)
        # A write that changes nothing, for its lock: updated_at orders the tasks a reviewer
        # skipped (the one skipped longest ago first), and stamping it on each arrival sent
        # the task to the end of their round.
        .values(updated_at=ReviewTask.updated_at)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount == 0:
        session.rollback()
        return None
    task = session.exec(
        select(ReviewTask)
        .where(col(ReviewTask.open_key) == text_hash)
        .execution_options(populate_existing=True)
    ).one()
    assert task.id is not None
    _link_feedback(session, feedback_id=feedback_id, task_id=task.id)
    if arrival_key in task.arrival_keys:
        session.commit()
        return task, False
    task.arrivals += 1
    if user_report:
        task.reports += 1
        # An audit item stays one: dropping reported items from the sample would leave out
        # the likeliest errors and overstate live precision. Its reports still raise it.
        if task.reason != ReviewReason.AUDIT:
            task.reason = ReviewReason.USER_REPORT
    task.arrival_keys = [*task.arrival_keys, arrival_key][-MAX_ARRIVAL_KEYS:]
    task.priority = task_priority(task)
    session.add(task)
    session.commit()
    session.refresh(task)
    return task, True


def _link_feedback(session: Session, *, feedback_id: int | None, task_id: int) -> None:
    """Attach a user report to the task that reviews it (not committed: the caller commits it
    with the task's count, so no label of the task can come between the two and settle the
    task's reports without this one, which was then left `in_review` for good)."""
    if feedback_id is None:
        return
    feedback = session.get(Feedback, feedback_id)
    if feedback is None:
        log.warning("feedback %s named by a review job does not exist", feedback_id)
        return
    feedback.task_id = task_id
    if feedback.status == FeedbackStatus.RECEIVED:
        feedback.status = FeedbackStatus.IN_REVIEW
    session.add(feedback)
