"""Dataset snapshots: which base data and which reviewer labels a retraining used.

A snapshot's `created_at` is when its training sets were read, so labels created later are
"new" for the automatic-retraining trigger. A snapshot is committed together with the model
version trained on it, never before: one left by a retraining that died registering its version
counted as the latest, and the next automatic retraining waited for labels enough again.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, func, select

from service.crud.labels import undone_labels
from service.crud.overlap import disputed_contents
from service.entities import DatasetSnapshot, Label
from service.entities.common import as_utc, utcnow
from service.errors import NotFoundError


def create_snapshot(
    session: Session,
    *,
    base_hash: str,
    base_rows: int,
    train_label_ids: list[int],
    holdout_label_ids: list[int],
    created_at: datetime | None = None,
) -> DatasetSnapshot:
    """Add a snapshot to the session, flushed (it has its id) but not committed: the caller
    commits it with the version trained on it (`registry.register`), or rolls both back."""
    row = DatasetSnapshot(
        base_hash=base_hash,
        base_rows=base_rows,
        train_label_ids=sorted(train_label_ids),
        holdout_label_ids=sorted(holdout_label_ids),
        created_at=created_at or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_snapshot(session: Session, *, snapshot_id: int) -> DatasetSnapshot:
    row = session.get(DatasetSnapshot, snapshot_id)
    if row is None:
        raise NotFoundError(f"dataset snapshot {snapshot_id} does not exist")
    return row


def latest_snapshot(session: Session) -> DatasetSnapshot | None:
    """The snapshot whose data was read last."""
    return session.exec(
        select(DatasetSnapshot).order_by(
            col(DatasetSnapshot.created_at).desc(), col(DatasetSnapshot.id).desc()
        )
    ).first()


def labels_since(session: Session, *, since: datetime | None) -> int:
    """Current (not superseded) labels created after `since` (all with None) that a retraining
    would learn: not those of contents whose reviewers disagree and wait for a decision, nor
    those taken back with undo and not replaced (as `crud.labels.current_labels`)."""
    query = (
        select(func.count())
        .select_from(Label)
        .where(
            col(Label.superseded_by).is_(None),
            col(Label.text_hash).not_in(disputed_contents()),
            col(Label.id).not_in(undone_labels()),
        )
    )
    if since is not None:
        query = query.where(col(Label.created_at) > as_utc(since))
    return session.exec(query).one()


def labels_since_latest_snapshot(session: Session) -> int:
    """New labels (`labels_since`) created after the latest snapshot; all if none."""
    latest = latest_snapshot(session)
    return labels_since(session, since=latest.created_at if latest is not None else None)
