"""The review queue's bound (run after each labelling job): unsure tasks past the limit or the
age limit leave the queue as `shed`, so reviewers' attention goes to what can still matter;
what people sent, the audit and tasks already labelled once stay."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlmodel import Session, col, select

from service.crud.review import count_tasks
from service.entities.review import ReviewReason, ReviewStage, ReviewStatus, ReviewTask

log = logging.getLogger(__name__)


def _sheddable() -> tuple[ColumnElement[bool], ...]:
    """Tasks the queue bound may shed: open (not leased), unsure, and never reported. What
    a person sent (a report), what measures or checks the model (audit, label_check), and a
    task already labelled once (waiting for a second opinion or a decision) stays."""
    return (
        ReviewTask.status == ReviewStatus.OPEN,
        ReviewTask.stage == ReviewStage.FIRST,
        ReviewTask.reason == ReviewReason.LOW_CONFIDENCE,
        col(ReviewTask.reports) == 0,
    )


def _shed_where(session: Session, *conditions: Any, now: datetime) -> int:
    """Mark the sheddable tasks matching `conditions` shed; how many were."""
    result = session.exec(
        update(ReviewTask)
        .where(*_sheddable(), *conditions)
        .values(status=ReviewStatus.SHED, open_key=None, updated_at=now, shed_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


def shed(
    session: Session, *, limit: int, max_age: timedelta | None, now: datetime
) -> dict[str, int]:
    """Bound the queue: shed unsure tasks open longer than `max_age`, then the lowest-priority
    ones past `limit` open unsure tasks (0: no limit). Returns how many went, by cause.

    A claim running meanwhile is safe: only rows still `open` when the UPDATE reaches them
    change, so a task just leased to a reviewer stays theirs.
    """
    aged = 0
    if max_age is not None:
        aged = _shed_where(session, col(ReviewTask.created_at) < now - max_age, now=now)
    excess = count_tasks(session, *_sheddable()) - limit if limit else 0
    overflow = 0
    if excess > 0:
        lowest = (
            select(ReviewTask.id)
            .where(*_sheddable())
            .order_by(col(ReviewTask.priority), col(ReviewTask.id))
            .limit(excess)
        )
        overflow = _shed_where(session, col(ReviewTask.id).in_(lowest.scalar_subquery()), now=now)
    session.commit()
    if aged or overflow:
        log.info(
            "review queue bound: shed %d tasks past the age limit, %d past the limit",
            aged,
            overflow,
        )
    return {"age": aged, "limit": overflow}
