"""The review queue's work on a task: labelling, skipping, undoing (reopen), and the queue's
counts. (Tasks come in through `review_intake`, are leased to reviewers in `leases`, and the
bound sheds them in `queue_bound`.)

Concurrency is settled by the database, the same way on SQLite and PostgreSQL: one open task
per content (the unique `open_key`, NULL once labelled); every change is a conditional
`UPDATE` that holds only if the task is still as read (`transition`), and a change that finds
it otherwise says why (`refusal`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.crud import labels as labels_crud
from service.crud import overlap
from service.crud.aggregates import counts_by
from service.crud.review_intake import SKIP_STEP
from service.entities import Feedback, FeedbackStatus, Label, LabelPublic, LabelSource
from service.entities.common import day_start, utcnow
from service.entities.feedback import SETTLED
from service.entities.review import ACTIVE, ReviewReason, ReviewStage, ReviewStatus, ReviewTask
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.outbox import pending_count, stopped_count
from service.tags import TagSet


def get_task(session: Session, *, task_id: int) -> ReviewTask:
    """A task as stored now (re-read even if the session holds it); NotFoundError if none."""
    task = session.get(ReviewTask, task_id, populate_existing=True)
    if task is None:
        raise NotFoundError(f"review task {task_id} does not exist")
    return task


def active_tasks(session: Session) -> list[ReviewTask]:
    """Every open or leased task, highest priority first."""
    return list(
        session.exec(
            select(ReviewTask)
            .where(col(ReviewTask.status).in_(ACTIVE))
            .order_by(col(ReviewTask.priority).desc(), col(ReviewTask.id))
        )
    )


def _may_act(reviewer: str, now: datetime) -> ColumnElement[bool]:
    """Open, leased to `reviewer`, or leased with an expired lease."""
    return or_(
        ReviewTask.status == ReviewStatus.OPEN,
        # Leased only: a task the queue bound shed is nobody's to skip or release, whatever
        # lease fields it still carries.
        and_(
            ReviewTask.status == ReviewStatus.LEASED,
            or_(col(ReviewTask.leased_by) == reviewer, col(ReviewTask.lease_expires_at) < now),
        ),
    )


class LabelledAlready(ConflictError):
    """The task already holds `label`, the acting reviewer's own: their request came after it
    (a retry whose first answer was lost, another tab). The 409 carries the label, so that a
    client can tell its reviewer the label is saved, and which tag it has."""

    def __init__(self, task_id: int, label: Label) -> None:
        super().__init__(
            f"task {task_id} is already labelled {label.tag!r} by {label.reviewer!r} (you); "
            "reopen it to change the label",
            extra={"label": LabelPublic.of(label).model_dump(mode="json")},
        )
        self.label = label


def recorded_label(session: Session, *, task: ReviewTask, reviewer: str) -> Label | None:
    """`reviewer`'s label that `task` records as one of its answers (final, first or second
    opinion), if any. An undo takes the label off the task, so a label undone is not one."""
    ids = [i for i in (task.final_label_id, task.first_label_id, task.second_label_id) if i]
    if not ids:
        return None
    return session.exec(
        select(Label)
        .where(col(Label.id).in_(ids), Label.reviewer == reviewer)
        .order_by(col(Label.id).desc())
    ).first()


def refusal(session: Session, *, task_id: int, reviewer: str) -> ConflictError:
    """Why `reviewer` may not act on a task (NotFoundError raised for unknown tasks)."""
    session.rollback()
    task = get_task(session, task_id=task_id)
    if (own := recorded_label(session, task=task, reviewer=reviewer)) is not None:
        return LabelledAlready(task_id, own)
    if task.status == ReviewStatus.LABELED:
        final = session.get(Label, task.final_label_id) if task.final_label_id else None
        by = f" by {final.reviewer!r}" if final is not None else ""
        return ConflictError(f"task {task_id} is already labelled{by}")
    if task.status == ReviewStatus.SHED:
        return ConflictError(f"task {task_id} was shed from the queue unreviewed (queue bound)")
    if task.status == ReviewStatus.LEASED and task.leased_by != reviewer:
        return ConflictError(f"task {task_id} is leased to {task.leased_by!r}")
    if reviewer in (task.first_reviewer, task.second_reviewer):
        wanted = "a decision" if task.stage == ReviewStage.ADJUDICATE else "a second opinion"
        return ConflictError(
            f"task {task_id} waits for {wanted} from another reviewer than {reviewer!r}"
        )
    return ConflictError(f"task {task_id} changed concurrently; try again")


def transition(
    session: Session,
    *,
    task_id: int,
    reviewer: str,
    values: dict[str, Any],
    guards: tuple[ColumnElement[bool], ...] = (),
) -> None:
    """Apply `values` to a task `reviewer` may act on, atomically; 409/404 otherwise."""
    now = utcnow()
    result = session.exec(
        update(ReviewTask)
        .where(
            col(ReviewTask.id) == task_id,
            ReviewTask.status != ReviewStatus.LABELED,
            _may_act(reviewer, now),
            *guards,
        )
        .values(updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise refusal(session, task_id=task_id, reviewer=reviewer)


def _settle_feedback(session: Session, *, task_id: int, label: Label) -> None:
    """User reports reviewed by this task, once its label is final: confirmed when the label
    agrees, else rejected."""
    for feedback in session.exec(select(Feedback).where(Feedback.task_id == task_id)):
        agrees = feedback.correct_tag == label.tag
        feedback.status = FeedbackStatus.CONFIRMED if agrees else FeedbackStatus.REJECTED
        feedback.label_id = label.id
        session.add(feedback)


def _unsettle_feedback(session: Session, *, task_id: int) -> None:
    """User reports of a task whose final label was taken back (undo): in review again."""
    session.exec(
        update(Feedback)
        .where(col(Feedback.task_id) == task_id, col(Feedback.status).in_(SETTLED))
        .values(status=FeedbackStatus.IN_REVIEW, label_id=None)
        .execution_options(synchronize_session=False)
    )


def _append(session: Session, *, task: ReviewTask, tag: str, reviewer: str, share: float) -> Label:
    """`reviewer`'s label of `task`'s content, the content's label now (flushed, not committed)."""
    return labels_crud.append_label(
        session,
        text_hash=task.text_hash,
        title=task.title,
        description=task.description,
        tag=tag,
        reviewer=reviewer,
        holdout_share=share,
        source=LabelSource.REVIEW,
        task_id=task.id,
    )


def label(
    session: Session,
    *,
    task_id: int,
    tag: str,
    reviewer: str,
    tags: TagSet,
    holdout_share: float,
    overlap_share: float = 0.0,
) -> Label:
    """Record `reviewer`'s answer for a task; it becomes the content's current label. A task in
    the overlap sample then waits for a second opinion, and two that differ for a decision
    (crud.overlap)."""
    if tag not in tags:
        raise InvalidInputError(f"tag {tag!r} is not in the approved list")
    task = get_task(session, task_id=task_id)
    if task.status == ReviewStatus.SHED:
        return _label_shed(session, task=task, tag=tag, reviewer=reviewer, share=holdout_share)
    first = session.get(Label, task.first_label_id) if task.first_label_id else None
    step = overlap.after_label(
        task,
        tag=tag,
        reviewer=reviewer,
        first_tag=first.tag if first else None,
        overlap_share=overlap_share,
    )
    # The stage read above must still hold when the update lands: otherwise 409, try again.
    guards = (ReviewTask.stage == task.stage, overlap.not_labelled_by(reviewer))
    try:
        transition(session, task_id=task_id, reviewer=reviewer, values=step.values, guards=guards)
    except ConflictError:
        task = get_task(session, task_id=task_id)  # shed since it was read: label it so
        if task.status != ReviewStatus.SHED:
            raise
        return _label_shed(session, task=task, tag=tag, reviewer=reviewer, share=holdout_share)
    # In the content's turn: a late label of a shed task of the same content may be written
    # at the same moment (`_label_shed`), and each read no label in force and kept its own.
    labels_crud.lock_content(session, text_hash=task.text_hash)
    row = _append(session, task=task, tag=tag, reviewer=reviewer, share=holdout_share)
    recorded = {step.label_column: row.id} if step.label_column else {}
    if step.closes:
        recorded["final_label_id"] = row.id
    session.exec(
        update(ReviewTask)
        .where(col(ReviewTask.id) == task_id)
        .values(**recorded)
        .execution_options(synchronize_session=False)
    )
    if step.closes:  # not a first label waiting for a second, nor two waiting for a decision
        _settle_feedback(session, task_id=task_id, label=row)
    session.commit()
    session.refresh(row)
    return row


def _label_shed(
    session: Session, *, task: ReviewTask, tag: str, reviewer: str, share: float
) -> Label:
    """A late label of a task the queue bound shed (its reviewer's lease lapsed, the task went
    back to the queue, and the bound took it out): nothing a reviewer sends is lost, so it is
    the content's label, as on any task, and the task is labelled. Against a label another
    reviewer gave the content meanwhile (it was queued again), it is a second opinion that
    differs: the task goes back to the queue for a decision, as two differing opinions do,
    unless another task holds the content in the queue, whose own answer then settles it."""
    assert task.id is not None
    labels_crud.lock_content(session, text_hash=task.text_hash)
    current = labels_crud.current_label(session, text_hash=task.text_hash)
    row = _append(session, task=task, tag=tag, reviewer=reviewer, share=share)
    values: dict[str, Any] = {"status": ReviewStatus.LABELED, "final_label_id": row.id}
    queued = select(ReviewTask.id).where(ReviewTask.open_key == task.text_hash)
    # Another reviewer's label only: a trusted user report's is replaced by a reviewer's, as
    # on a task that reviews the report, and is no reviewer's opinion to weigh against.
    disputed = (
        current is not None
        and current.source == LabelSource.REVIEW
        and current.reviewer != reviewer
        and current.tag != tag
    )
    if disputed and session.exec(queued).first() is None:
        assert current is not None
        values = {
            "status": ReviewStatus.OPEN,
            "open_key": task.text_hash,
            "stage": ReviewStage.ADJUDICATE,
            "first_label_id": current.id,
            "first_reviewer": current.reviewer,
            "second_label_id": row.id,
            "second_reviewer": reviewer,
        }
    try:
        result = session.exec(
            update(ReviewTask)
            .where(col(ReviewTask.id) == task.id, ReviewTask.status == ReviewStatus.SHED)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError:  # an undo put another task of the content back meanwhile
        session.rollback()
        raise ConflictError(f"task {task.id} changed concurrently; try again") from None
    if result.rowcount != 1:  # a copy of this label got there first
        raise refusal(session, task_id=task.id, reviewer=reviewer)
    session.commit()
    session.refresh(row)
    return row


def _skipped_already(task: ReviewTask, *, reviewer: str) -> bool:
    """Whether `reviewer`'s skip of `task` is in already: they were the last to skip it and
    do not hold it since (a skip sent again after its answer was lost). Skipping a task takes
    the lease back, so a reviewer who claims it again holds it and can skip it again."""
    return task.skipped_by == reviewer and task.leased_by != reviewer and task.status in ACTIVE


def _not_skipped_by(reviewer: str) -> ColumnElement[bool]:
    """`_skipped_already` as the skip's guard, so that two copies of one skip racing each other
    count once too."""
    skipped_by = col(ReviewTask.skipped_by)
    return or_(skipped_by.is_(None), skipped_by != reviewer, col(ReviewTask.leased_by) == reviewer)


def skip(session: Session, *, task_id: int, reviewer: str) -> ReviewTask:
    """Put a task back, a little lower, and hand it to other reviewers first. A skip sent
    again counts once: the task is answered as it stands."""
    try:
        transition(
            session,
            task_id=task_id,
            reviewer=reviewer,
            values={
                "status": ReviewStatus.OPEN,
                "leased_by": None,
                "lease_expires_at": None,
                "skips": ReviewTask.skips + 1,
                "skipped_by": reviewer,
                "priority": ReviewTask.priority - SKIP_STEP,
            },
            guards=(_not_skipped_by(reviewer),),
        )
    except ConflictError:
        task = get_task(session, task_id=task_id)  # refusal rolled back: as stored now
        if _skipped_already(task, reviewer=reviewer):
            return task
        raise
    session.commit()
    return get_task(session, task_id=task_id)


def _undone_already(
    session: Session, *, task: ReviewTask, reviewer: str, current: Label | None
) -> bool:
    """Whether `reviewer`'s undo of `task` is in already (an undo sent again after its answer
    was lost): the label in force is theirs, from this task, and the task no longer records
    it. Only an undo takes a label off its task while the label stays in force."""
    return (
        task.status != ReviewStatus.LABELED
        and current is not None
        and (current.task_id, current.reviewer) == (task.id, reviewer)
        and recorded_label(session, task=task, reviewer=reviewer) is None
    )


def _lease_again(session: Session, *, task: ReviewTask, reviewer: str, lease_s: int) -> ReviewTask:
    """An undone task leased to its reviewer again (renewed if they still hold it), as the
    undo did; ConflictError when someone else holds it now."""
    assert task.id is not None
    now = utcnow()
    result = session.exec(
        update(ReviewTask)
        .where(col(ReviewTask.id) == task.id, ReviewTask.stage == task.stage)
        .where(ReviewTask.status != ReviewStatus.LABELED, _may_act(reviewer, now))
        .values(
            status=ReviewStatus.LEASED,
            leased_by=reviewer,
            lease_expires_at=now + timedelta(seconds=lease_s),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        raise ConflictError(f"task {task.id} changed concurrently or is leased to someone else")
    return get_task(session, task_id=task.id)


def reopen(session: Session, *, task_id: int, reviewer: str, lease_s: int) -> ReviewTask:
    """Undo: lease a task back to the reviewer whose label was its last word, at that label's
    stage; their next label supersedes it. An undo sent again leases the task back the same
    way (it does not step back another stage)."""
    task = get_task(session, task_id=task_id)
    current = labels_crud.current_label(session, text_hash=task.text_hash)
    if _undone_already(session, task=task, reviewer=reviewer, current=current):
        return _lease_again(session, task=task, reviewer=reviewer, lease_s=lease_s)
    values = overlap.undo_values(task, reviewer=reviewer, current=current)
    now = utcnow()
    may_take = (
        ReviewTask.status == ReviewStatus.LABELED
        if task.status == ReviewStatus.LABELED
        else _may_act(reviewer, now)
    )
    try:
        result = session.exec(
            update(ReviewTask)
            .where(col(ReviewTask.id) == task_id, ReviewTask.stage == task.stage, may_take)
            .values(
                status=ReviewStatus.LEASED,
                leased_by=reviewer,
                lease_expires_at=now + timedelta(seconds=lease_s),
                updated_at=now,
                **values,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1 and task.status == ReviewStatus.LABELED:
            _unsettle_feedback(session, task_id=task_id)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"another open task exists for the content of task {task_id}") from None
    if result.rowcount != 1:
        return _reopen_lost_race(session, task_id=task_id, reviewer=reviewer, lease_s=lease_s)
    return get_task(session, task_id=task_id)


def _reopen_lost_race(session: Session, *, task_id: int, reviewer: str, lease_s: int) -> ReviewTask:
    """After an undo's update found the task changed: a copy of the same undo, sent at the
    same time, got there first (the task is leased back to `reviewer`), or it is a conflict."""
    task = get_task(session, task_id=task_id)
    current = labels_crud.current_label(session, text_hash=task.text_hash)
    if _undone_already(session, task=task, reviewer=reviewer, current=current):
        return _lease_again(session, task=task, reviewer=reviewer, lease_s=lease_s)
    raise ConflictError(f"task {task_id} changed concurrently or is leased to someone else")


def count_tasks(session: Session, *conditions: Any) -> int:
    """Number of tasks matching `conditions`."""
    return session.exec(select(func.count()).select_from(ReviewTask).where(*conditions)).one()


def stats(session: Session, *, now: datetime) -> dict[str, Any]:
    """Queue counts for the review page and operators. Expired leases count as open."""
    expired = col(ReviewTask.lease_expires_at) < now
    leased = count_tasks(session, ReviewTask.status == ReviewStatus.LEASED, ~expired)
    open_ = count_tasks(session, col(ReviewTask.status).in_(ACTIVE)) - leased
    active = col(ReviewTask.status).in_(ACTIVE)
    by_reason = counts_by(session, ReviewTask.reason, ReviewReason, active)
    by_stage = counts_by(session, ReviewTask.stage, ReviewStage, active)
    labeled_today = session.exec(
        select(func.count())
        .select_from(Label)
        .where(
            col(Label.id).in_(labels_crud.review_labels_standing()),
            col(Label.created_at) >= day_start(now),
        )
    ).one()
    return {
        "open": open_,
        "leased": leased,
        "labeled_today": labeled_today,
        # Ever shed: a late label takes a task out of `shed`, not out of this count.
        "shed": count_tasks(session, col(ReviewTask.shed_at).is_not(None)),
        "shed_now": count_tasks(session, ReviewTask.status == ReviewStatus.SHED),
        "by_reason": by_reason,
        "by_stage": by_stage,
        "outbox_pending": pending_count(session),
        "outbox_stopped": stopped_count(session),
    }
