"""A version's data lineage: its dataset snapshot, read back for people (the API's
GET /models/{version}/lineage), with the user reports whose labels went into it.

The registry records only the snapshot's id with a version; without this, which labels a
candidate learned from and which it was judged on could be read only from the database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from service.crud.snapshots import get_snapshot
from service.entities import Feedback, Label, ModelVersion
from service.entities.common import as_utc
from service.entities.snapshot import LineageReport, ModelLineage


def _reports(session: Session, *, trained: list[int], held_out: list[int]) -> list[LineageReport]:
    """The reports behind the labels among `trained` or `held_out`: the reports a label
    settled (or a trusted report made), and those its review task was reviewing when it was
    given. The second holds after an undo: that takes the label off its reports (which a new
    label then settles), and the version that learned from it still did."""
    ids = [*trained, *held_out]
    if not ids:
        return []
    given = {
        task_id: (label_id, as_utc(created_at))
        for label_id, task_id, created_at in session.exec(
            select(Label.id, Label.task_id, Label.created_at).where(col(Label.id).in_(ids))
        )
        if task_id is not None and label_id is not None
    }
    rows = session.exec(
        select(Feedback)
        .where(or_(col(Feedback.label_id).in_(ids), col(Feedback.task_id).in_(list(given))))
        .order_by(col(Feedback.id))
    ).all()
    wanted, held = set(ids), set(held_out)
    behind = [(row, _label_behind(row, wanted=wanted, given=given)) for row in rows]
    return [
        LineageReport(
            feedback_id=row.id,
            label_id=label_id,
            status=row.status.value,
            held_out=label_id in held,
        )
        for row, label_id in behind
        if row.id is not None and label_id is not None
    ]


def _label_behind(
    row: Feedback, *, wanted: set[int], given: dict[int, tuple[int, datetime]]
) -> int | None:
    """The label among `wanted` that report `row` is behind: the one that settled it, else the
    one its task gave (`given`, by task: the label and when) after it came, if any."""
    if row.label_id in wanted:
        return row.label_id
    if row.task_id not in given:
        return None
    label_id, given_at = given[row.task_id]
    # Not a report that joined the task after this label (waiting for a second opinion).
    return label_id if as_utc(row.created_at) <= given_at else None


def lineage(session: Session, *, version: ModelVersion) -> ModelLineage:
    """What `version` was made from: its snapshot's base data and labels, and the reports behind
    those labels; only the row counts for a version with no snapshot."""
    params = version.params
    eval_rows = params.get("eval_rows")
    if version.dataset_snapshot_id is None:
        imported = params.get("imported")
        return ModelLineage(
            version=version.version,
            imported_from=imported.get("version") if isinstance(imported, dict) else None,
            snapshot_id=None,
            read_at=None,
            base_hash=None,
            base_rows=None,
            train_rows=version.data_rows,
            eval_rows=eval_rows,
            train_labels=0,
            holdout_labels=0,
            train_label_ids=[],
            holdout_label_ids=[],
            reports=[],
        )
    snapshot = get_snapshot(session, snapshot_id=version.dataset_snapshot_id)
    trained, held_out = list(snapshot.train_label_ids), list(snapshot.holdout_label_ids)
    return ModelLineage(
        version=version.version,
        snapshot_id=snapshot.id,
        read_at=as_utc(snapshot.created_at),
        base_hash=snapshot.base_hash,
        base_rows=snapshot.base_rows,
        train_rows=version.data_rows,
        eval_rows=eval_rows,
        train_labels=len(trained),
        holdout_labels=len(held_out),
        train_label_ids=trained,
        holdout_label_ids=held_out,
        reports=_reports(session, trained=trained, held_out=held_out),
    )
