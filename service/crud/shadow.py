"""Shadow statistics: how a candidate's answers on live traffic compare with production and
with what reviewers later decided."""

from __future__ import annotations

from sqlalchemy import and_
from sqlmodel import Session, SQLModel, col, func, select

from service.crud.aggregates import count_where, rate
from service.crud.labels import undone_labels
from service.crud.overlap import disputed_contents
from service.entities import Label, Prediction, ShadowPrediction


class ShadowStats(SQLModel):
    """Agreement of a shadow version; the rates are None while there is nothing to compare."""

    version: str
    n: int
    agreement_with_production: float | None
    labeled: int
    agreement_with_labels: float | None


def shadow_stats(session: Session, *, version: str) -> ShadowStats:
    """Counts over every shadow prediction of `version`; a shadow answer is compared with the
    current label of the predicted content when it was given since the shadow started (its
    first answer). A label given before is no test of it: the candidate may have trained on
    it, and agreeing with what it learnt overstated how it does on what people decide. Nor is
    the label a dispute leaves in force, the second of two opinions that differ, until a third
    reviewer decides, nor a label its reviewer took back (undo) until a label replaces it."""
    of_version = ShadowPrediction.model_version == version
    n, agreed = session.exec(
        select(func.count(), count_where(col(ShadowPrediction.agrees))).where(of_version)
    ).one()
    started = select(func.min(ShadowPrediction.created_at)).where(of_version).scalar_subquery()
    label_join = and_(
        col(Label.text_hash) == col(Prediction.text_hash),
        col(Label.superseded_by).is_(None),
        col(Label.created_at) >= started,
        col(Label.text_hash).not_in(disputed_contents()),
        col(Label.id).not_in(undone_labels()),
    )
    labeled, right = session.exec(
        select(
            func.count(),
            count_where(col(ShadowPrediction.tag) == col(Label.tag)),
        )
        .select_from(ShadowPrediction)
        .join(Prediction, col(Prediction.id) == col(ShadowPrediction.prediction_id))
        .join(Label, label_join)
        .where(of_version)
    ).one()
    return ShadowStats(
        version=version,
        n=n,
        agreement_with_production=rate(int(agreed), n),
        labeled=labeled,
        agreement_with_labels=rate(int(right), labeled),
    )
