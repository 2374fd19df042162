"""Prediction rows and the review work they create."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert
from sqlmodel import Session, col, select

from service.crud import labels as labels_crud
from service.crud.overlap import earlier_labels
from service.db import bound_lock_waits
from service.entities import (
    Feedback,
    OutboxItem,
    Prediction,
    PredictionCreate,
    PredictionRecord,
    PredictionStatus,
    ReviewTask,
    ShadowPrediction,
)
from service.entities.common import as_utc, utcnow
from service.entities.prediction import HumanLabel, ReviewState
from service.entities.review import ACTIVE, ReviewReason, ReviewStage
from service.errors import NotFoundError

REVIEW_KIND = "review"


def review_payload(
    prediction: Prediction | PredictionCreate, *, reason: ReviewReason
) -> dict[str, object]:
    """What the labelling job needs to create or bump a review task."""
    return {
        "prediction_id": prediction.id,
        "text_hash": prediction.text_hash,
        "title": prediction.title,
        "description": prediction.description,
        "tag": prediction.tag,
        "scores": prediction.scores,
        "model_version": prediction.model_version,
        "reason": reason.value,
    }


def in_audit_sample(text_hash: str, *, share: float) -> bool:
    """Whether content belongs to the audit sample: the same content always answers the same,
    so a repeat never opens a second audit, and the sample is uniform over contents."""
    return share > 0.0 and int(text_hash[:8], 16) < share * 0x1_0000_0000


def review_reason(prediction: PredictionCreate, *, audit_share: float) -> ReviewReason | None:
    """Why a new prediction goes to review, or None when it does not.

    The audit sample is drawn from every prediction, accepted or not, by content alone. Its
    labels are then a uniform sample of live traffic, so precision can be measured at the
    served cut and at any lower one (service/calibration.py lowers the cut on that evidence).
    A sampled unsure item costs no extra review: it was going to a reviewer anyway.
    """
    if in_audit_sample(prediction.text_hash, share=audit_share):
        return ReviewReason.AUDIT
    if prediction.status == PredictionStatus.REVIEW:
        return ReviewReason.LOW_CONFIDENCE
    return None


def save_predictions(
    session: Session,
    *,
    predictions: Sequence[PredictionCreate],
    shadows: Sequence[ShadowPrediction] = (),
    audit_share: float = 0.0,
) -> int:
    """Insert predictions, and an outbox row for each one that goes to review (low confidence
    or the audit sample), in one transaction.

    Bulk INSERTs (executemany) rather than the ORM's unit of work: 24 instead of 58 us per
    prediction row here, on the API process's thread that shares the GIL with the request path.
    """
    if predictions:
        session.execute(insert(Prediction), [p.model_dump() for p in predictions])
    session.add_all(shadows)
    now = utcnow()
    outbox = [
        {"kind": REVIEW_KIND, "payload": review_payload(p, reason=reason), "created_at": now}
        for p in predictions
        if (reason := review_reason(p, audit_share=audit_share)) is not None
    ]
    if outbox:
        session.execute(insert(OutboxItem), outbox)
    session.commit()
    return len(predictions)


def already_written(
    session: Session,
    *,
    predictions: Sequence[PredictionCreate],
    shadows: Sequence[ShadowPrediction] = (),
) -> tuple[set[str], set[tuple[str, str]]]:
    """Which of `predictions` (by id) and `shadows` (by prediction id and version) the database
    already has: what a replay of the spill file wrote before it was cut short."""
    ids = sorted({p.id for p in predictions} | {s.prediction_id for s in shadows})
    found: set[str] = set()
    found_shadows: set[tuple[str, str]] = set()
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[start : start + 500]
        found.update(session.exec(select(Prediction.id).where(col(Prediction.id).in_(chunk))))
        found_shadows.update(
            (pid, version)
            for pid, version in session.exec(
                select(ShadowPrediction.prediction_id, ShadowPrediction.model_version).where(
                    col(ShadowPrediction.prediction_id).in_(chunk)
                )
            )
        )
    return found, found_shadows


def add_label_checks(session: Session, *, suspects: Sequence[dict[str, Any]], version: str) -> int:
    """Add (not commit) the review items that send training rows whose label the model doubts
    (`SuspectReport.items`, as dumped in the training report) to review as `label_check`
    tasks, through the outbox like every review item: the caller commits them with the
    version they come from (`registry.register`). The suggestion is the file's label with the
    model's out-of-fold scores beside it, so the reviewer sees both. Content that already has
    a reviewer's label opens nothing (the labelling job checks), and a row sent again by the
    next training counts once. How many."""
    for item in suspects:
        payload = {
            "prediction_id": None,
            "text_hash": item["text_hash"],
            "title": item["title"],
            "description": item["description"],
            "tag": item["tag"],
            "scores": item["scores"],
            "model_version": version,
            "reason": ReviewReason.LABEL_CHECK.value,
        }
        session.add(OutboxItem(kind=REVIEW_KIND, payload=payload))
    return len(suspects)


def label_checks_sent(session: Session, *, version: str) -> int:
    """How many label checks from `version`'s training the outbox holds. Asked only for a
    version registered before its checks were written in its own transaction (one with no
    `registry.LABEL_CHECKS` in its params), by a retraining that finishes it
    (`pipeline.review_saved_suspects`), which then records them in the version: no one asks
    again for that version.

    The retention prune deletes done outbox rows older than its period (`db prune`: at least a
    day; 30 to 90 in practice), so this could miss checks that went, and they would go again.
    Not in practice: what asks is a retraining run again minutes after the one that registered
    the version died (RQ's retry), or the first retraining on that same data since the
    upgrade, and checks that old are rare; were one sent again, content a reviewer labelled
    since opens nothing and an open task for it counts it once (`add_label_checks`). The scan
    reads the payloads, which is fine for what asks it (rare), not for a request path."""
    payload = col(OutboxItem.payload)
    return session.exec(
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.kind == REVIEW_KIND,
            payload["reason"].as_string() == ReviewReason.LABEL_CHECK.value,
            payload["model_version"].as_string() == version,
        )
    ).one()


def get_prediction(session: Session, *, prediction_id: str) -> Prediction:
    row = session.get(Prediction, prediction_id)
    if row is None:
        raise NotFoundError(
            f"prediction {prediction_id!r} does not exist (or was pruned: tagflow db prune)"
        )
    return row


def prediction_record(session: Session, *, prediction: Prediction) -> PredictionRecord:
    """A stored prediction with the label in force for its content and its latest task. While
    two reviewers' labels of the content differ and wait for a decision, it has no label in
    force (the export and retraining leave it out too): the label is null, and the review is
    the task that waits, with the two tags (`opinions`). The later of the two was shown as
    the label, as if the dispute were settled its way. Nor has it one while the label was
    taken back (undo) and not replaced: it was shown as the label, which the export left out."""
    of_content = ReviewTask.text_hash == prediction.text_hash
    waiting = (ReviewTask.stage == ReviewStage.ADJUDICATE, col(ReviewTask.status).in_(ACTIVE))
    disputed = session.exec(select(ReviewTask).where(of_content, *waiting)).first()
    label = (
        None if disputed else labels_crud.label_in_force(session, text_hash=prediction.text_hash)
    )
    task = (
        disputed
        or session.exec(
            select(ReviewTask).where(of_content).order_by(col(ReviewTask.id).desc())
        ).first()
    )
    return PredictionRecord(
        **prediction.model_dump(exclude={"id", "created_at"}),
        prediction_id=prediction.id,
        created_at=as_utc(prediction.created_at),
        label=None
        if label is None or label.id is None
        else HumanLabel(
            label_id=label.id,
            tag=label.tag,
            source=label.source,
            created_at=as_utc(label.created_at),
        ),
        review=None
        if task is None or task.id is None
        else ReviewState(
            task_id=task.id,
            status=task.status,
            reason=task.reason,
            stage=task.stage,
            opinions=[e.tag for e in earlier_labels(session, task=task)],
        ),
    )


PRUNE_BATCH = 5000  # rows per DELETE, each its own transaction: no long lock on the table


def _prunable(before: datetime) -> Select[tuple[str]]:
    """Ids of predictions older than `before` that no user report points at (a report keeps
    the prediction it is about, for as long as the report exists)."""
    reported = select(Feedback.prediction_id)
    return select(Prediction.id).where(
        col(Prediction.created_at) < before, col(Prediction.id).not_in(reported)
    )


def prune_predictions(
    session: Session,
    *,
    before: datetime,
    dry_run: bool = False,
    batch: int = PRUNE_BATCH,
    lock_timeout_s: float | None = None,
) -> dict[str, int]:
    """Delete logged predictions older than `before`, and their shadow scores, in batches;
    predictions a user report points at stay. Returns how many rows went (or would go).
    With `lock_timeout_s`, a lock held elsewhere is waited for that long at most in each
    batch (PostgreSQL), then the prune stops with an outage: the batches before are kept."""
    bound_lock_waits(session, seconds=lock_timeout_s)
    if dry_run:
        prunable = _prunable(before)
        of_prunable = col(ShadowPrediction.prediction_id).in_(prunable)
        return {
            "predictions": session.exec(
                select(func.count()).select_from(prunable.subquery())
            ).one(),
            "shadow_predictions": session.exec(
                select(func.count()).select_from(ShadowPrediction).where(of_prunable)
            ).one(),
        }
    deleted = {"predictions": 0, "shadow_predictions": 0}
    while ids := list(session.exec(_prunable(before).limit(batch))):
        shadow = session.exec(
            delete(ShadowPrediction).where(col(ShadowPrediction.prediction_id).in_(ids))
        )
        rows = session.exec(delete(Prediction).where(col(Prediction.id).in_(ids)))
        session.commit()
        deleted["shadow_predictions"] += int(shadow.rowcount)
        deleted["predictions"] += int(rows.rowcount)
        bound_lock_waits(session, seconds=lock_timeout_s)  # the bound lasts one transaction
    return deleted
