"""Leasing review tasks to reviewers: a claim (the reviewer's live lease resumed, else the
best open task leased), renewing a lease, giving leases back, and leases that ran out returned
to the queue. (What a reviewer does with a leased task is in `review`.)

One task per claiming reviewer: a reviewer's claims take turns (`_lock_reviewer`), so claims
sent at once (two tabs, a retry) all resume the lease the first one took. One reviewer per
task: a claim picks a candidate with `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite
has no row locks and ignores it) and takes it with a conditional `UPDATE ... WHERE status =
'open'`, trying the next candidate when another claim won.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from service.crud import overlap
from service.crud.review import get_task, refusal, transition
from service.db import take_turns
from service.entities.common import utcnow
from service.entities.review import ReviewStatus, ReviewTask
from service.errors import ConflictError

CLAIM_ATTEMPTS = 50
# PostgreSQL's advisory locks in their two-key form: this class, and a hash of the reviewer.
_CLAIM_LOCK_CLASS = 0x74666C63


def _expire_leases(session: Session, *, now: datetime) -> int:
    """Return leases past their expiry to the queue (rows other claims hold are left alone)."""
    ids = list(
        session.exec(
            select(ReviewTask.id)
            .where(ReviewTask.status == ReviewStatus.LEASED, col(ReviewTask.lease_expires_at) < now)
            # Redundant (a leased task has a holder) but it lets the planner read the partial
            # index of leased rows instead of every task: 3.8 -> 0.4 ms with 20,000 open.
            .where(col(ReviewTask.leased_by).is_not(None))
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.exec(
            update(ReviewTask)
            .where(col(ReviewTask.id).in_(ids), ReviewTask.status == ReviewStatus.LEASED)
            .values(status=ReviewStatus.OPEN, leased_by=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return len(ids)


def _next_candidate(session: Session, *, reviewer: str) -> int | None:
    """The best open task for `reviewer` (not one they labelled at an earlier stage): ones
    they skipped come last, the one they skipped longest ago first.

    Two queries rather than one ordered by "skipped by me" first: that expression cannot use
    the priority index, so every claim sorted the whole queue (17.7 ms on PostgreSQL with
    20,000 open tasks, against 0.3 ms read off the index). The second is asked only when
    every task open to the reviewer is one they skipped; in priority order it handed back
    the top one at every skip (a skip sinks it by SKIP_STEP only), so S seemed to do nothing.
    """
    eligible = (ReviewTask.status == ReviewStatus.OPEN, overlap.not_labelled_by(reviewer))
    skipped_by = col(ReviewTask.skipped_by)
    by_priority = (col(ReviewTask.priority).desc(), col(ReviewTask.id))
    # A skip stamps updated_at: oldest first goes round the skipped tasks. (Another reviewer
    # claiming and releasing one since stamps it again, which only moves it later in the round.)
    tiers = (
        (or_(skipped_by.is_(None), skipped_by != reviewer), by_priority),
        (skipped_by == reviewer, (col(ReviewTask.updated_at), *by_priority)),
    )
    for mine, order in tiers:
        found = session.exec(
            select(ReviewTask.id)
            .where(*eligible, mine)
            .order_by(*order)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if found is not None:
            return found
    return None


def claim(session: Session, *, reviewer: str, lease_s: int) -> ReviewTask | None:
    """The task `reviewer` already holds, its lease renewed; else lease the highest-priority
    open task to them. None when nothing is open."""
    now = utcnow()
    _expire_leases(session, now=now)
    _lock_reviewer(session, reviewer=reviewer)
    if (held := _resume(session, reviewer=reviewer, now=now, lease_s=lease_s)) is not None:
        return held
    for _ in range(CLAIM_ATTEMPTS):
        task_id = _next_candidate(session, reviewer=reviewer)
        if task_id is None:
            session.commit()
            return None
        taken = session.exec(
            update(ReviewTask)
            .where(col(ReviewTask.id) == task_id, ReviewTask.status == ReviewStatus.OPEN)
            .values(
                status=ReviewStatus.LEASED,
                leased_by=reviewer,
                updated_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
            )
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:
            session.commit()
            return get_task(session, task_id=task_id)
    session.rollback()
    raise ConflictError("the queue is too contended right now; try again")


def _lock_reviewer(session: Session, *, reviewer: str) -> None:
    """Take `reviewer`'s claim lock for the rest of the session's transaction, so that their
    claims take turns: each reads the lease the one before took, and resumes it, instead of
    finding none and leasing another task (claims sent at once held up to one task each).
    Other reviewers' claims go on (PostgreSQL); SQLite has one write lock, which a claim takes
    anyway to lease a task."""
    take_turns(session, cls=_CLAIM_LOCK_CLASS, key=reviewer, table=ReviewTask)


def _resume(session: Session, *, reviewer: str, now: datetime, lease_s: int) -> ReviewTask | None:
    """Renew and return the live lease `reviewer` holds, if any.

    A page that crashed, lost its key or was closed without saying so leaves its task leased
    until the lease runs out (10 minutes by default). Handing it back on the next claim lets
    its reviewer carry on where they were, instead of stranding it while they work on others.
    """
    held = session.exec(
        select(ReviewTask.id)
        .where(ReviewTask.status == ReviewStatus.LEASED, col(ReviewTask.leased_by) == reviewer)
        .where(col(ReviewTask.lease_expires_at) >= now)  # one another claim is expiring
        # No ORDER BY: a reviewer holds one task at a time, and ordering by priority made
        # SQLite walk the priority index through all 20,000 open tasks (31 ms, against 6).
        .limit(1)
    ).first()
    if held is None:
        return None
    renewed = session.exec(
        update(ReviewTask)
        .where(col(ReviewTask.id) == held, col(ReviewTask.leased_by) == reviewer)
        .where(ReviewTask.status == ReviewStatus.LEASED)
        .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return get_task(session, task_id=held) if renewed.rowcount == 1 else None


def release(session: Session, *, task_id: int, reviewer: str) -> ReviewTask:
    """Give a lease back unchanged (the reviewer closed the page)."""
    transition(
        session,
        task_id=task_id,
        reviewer=reviewer,
        values={"status": ReviewStatus.OPEN, "leased_by": None, "lease_expires_at": None},
    )
    session.commit()
    return get_task(session, task_id=task_id)


def renew(session: Session, *, task_id: int, reviewer: str, lease_s: int) -> ReviewTask:
    """Extend the lease `reviewer` holds on a task by `lease_s` seconds from now: the page
    renews it while its reviewer is still at the item, which otherwise went to another
    reviewer after 10 minutes. Only the holder renews, and only a lease still theirs: one
    run out and taken back to the queue (a claim expires it), labelled, skipped or leased to
    someone else is a 409 that says why (404 for an unknown task)."""
    now = utcnow()
    result = session.exec(
        update(ReviewTask)
        .where(col(ReviewTask.id) == task_id, ReviewTask.status == ReviewStatus.LEASED)
        .where(col(ReviewTask.leased_by) == reviewer)
        .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        if get_task(session, task_id=task_id).status == ReviewStatus.OPEN:
            # Not "changed concurrently; try again": sent again, it would fail the same way.
            raise ConflictError(
                f"task {task_id} is not leased to {reviewer!r}: its lease ran out or was given back"
            )
        raise refusal(session, task_id=task_id, reviewer=reviewer)
    session.commit()
    return get_task(session, task_id=task_id)


def release_held(session: Session, *, reviewer: str, keep: Collection[int] = ()) -> list[int]:
    """Give back every lease `reviewer` holds but those of `keep`, unchanged, and return the
    tasks' ids: what a page hands over (Switch) may include a task whose claim or undo answer
    never reached it, leased to the reviewer unseen until the lease ran out. `keep` names the
    tasks the reviewer's other tabs still show."""
    now = utcnow()
    held = (
        select(ReviewTask.id)
        .where(ReviewTask.status == ReviewStatus.LEASED, col(ReviewTask.leased_by) == reviewer)
        .order_by(col(ReviewTask.id))
        .with_for_update()
    )
    if keep:
        held = held.where(col(ReviewTask.id).not_in(list(keep)))
    ids = list(session.exec(held))
    if ids:
        session.exec(
            update(ReviewTask)
            .where(col(ReviewTask.id).in_(ids), ReviewTask.status == ReviewStatus.LEASED)
            .where(col(ReviewTask.leased_by) == reviewer)
            .values(status=ReviewStatus.OPEN, leased_by=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return [task_id for task_id in ids if task_id is not None]
