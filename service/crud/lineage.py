"""A version's data lineage: its dataset snapshot, read back for people (the API's
GET /models/{version}/lineage), with the user reports whose labels went into it.

The registry records only the snapshot's id with a version; without this, which labels a
candidate learned from and which it was judged on could be read only from the database.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from service.crud.snapshots import get_snapshot
from service.entities import Feedback, ModelVersion
from service.entities.common import as_utc
from service.entities.snapshot import LineageReport, ModelLineage


def _reports(session: Session, *, trained: list[int], held_out: list[int]) -> list[LineageReport]:
    """The reports whose label (the one their review gave) is among `trained` or `held_out`."""
    ids = [*trained, *held_out]
    if not ids:
        return []
    rows = session.exec(
        select(Feedback).where(col(Feedback.label_id).in_(ids)).order_by(col(Feedback.id))
    ).all()
    held = set(held_out)
    return [
        LineageReport(
            feedback_id=row.id,
            label_id=row.label_id,
            status=row.status.value,
            held_out=row.label_id in held,
        )
        for row in rows
        if row.id is not None and row.label_id is not None
    ]


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
