"""Audit statistics: how precise automatic acceptance is on live traffic, per model version.

An audit task is a prediction that was accepted automatically and sent to review anyway (the
audit sample). Its current label says whether the accepted tag was right, so over a version's
audited predictions the share of right ones is an unbiased estimate of that version's live
automatic-acceptance precision.
"""

from __future__ import annotations

import math

from sqlalchemy import and_
from sqlmodel import Session, SQLModel, col, select

from service.crud.aggregates import rate
from service.crud.labels import undone_labels
from service.crud.overlap import disputed_contents
from service.entities import Label
from service.entities.review import ReviewReason, ReviewTask

Z_95 = 1.959964  # two-sided 95% normal quantile


class AuditStats(SQLModel):
    """Live precision of a version's automatic acceptance; None while nothing is audited."""

    version: str
    audited: int
    agreed: int
    precision: float | None
    precision_lower_95: float | None
    target: float
    threshold: float | None = None  # only items accepted at or above this count
    meets_target: bool | None  # None until the 95% interval lies wholly on one side of it


def wilson_interval(agreed: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; stays inside [0, 1] even for 0 or n successes."""
    if n == 0:
        return None
    p = agreed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audited(
    session: Session, *, version: str, threshold: float | None = None
) -> list[tuple[float, bool]]:
    """`version`'s labelled audit items: the confidence it accepted each with, and whether the
    current label agrees with the accepted tag. With `threshold`, only items accepted at or
    above it: after the served cut was raised, what the old, lower cut accepted says nothing
    about the new one. An item whose two reviewers disagree counts once a third has decided:
    until then its latest label is one opinion of two, not the item's label. Nor does a label
    its reviewer took back (undo) and has not replaced: it says nothing of the accepted tag."""
    current_label = and_(
        col(Label.text_hash) == col(ReviewTask.text_hash),
        col(Label.superseded_by).is_(None),
        col(Label.id).not_in(undone_labels()),
    )
    rows = session.exec(
        select(ReviewTask.suggestion_tag, ReviewTask.suggestion_scores, Label.tag)
        .select_from(ReviewTask)
        .join(Label, current_label)
        .where(ReviewTask.reason == ReviewReason.AUDIT, ReviewTask.model_version == version)
        .where(col(ReviewTask.text_hash).not_in(disputed_contents()))
    ).all()
    items = [(float(scores.get(tag, 0.0)), tag == label) for tag, scores, label in rows if tag]
    return [(c, ok) for c, ok in items if c >= (threshold or 0.0)]


def summarize(
    items: list[tuple[float, bool]], *, version: str, target: float, threshold: float | None
) -> AuditStats:
    """Precision of audited `items` (from `audited`) with its Wilson interval, against `target`."""
    n, agreed = len(items), sum(ok for _, ok in items)
    interval = wilson_interval(agreed, n)
    meets = None
    if interval is not None and (interval[0] >= target or interval[1] < target):
        meets = interval[0] >= target
    return AuditStats(
        version=version,
        audited=n,
        agreed=agreed,
        precision=rate(agreed, n),
        precision_lower_95=None if interval is None else round(interval[0], 6),
        target=target,
        threshold=threshold,
        meets_target=meets,
    )


def audit_stats(
    session: Session, *, version: str, target: float, threshold: float | None = None
) -> AuditStats:
    """Live precision of `version`'s automatic acceptance (at or above `threshold`)."""
    items = audited(session, version=version, threshold=threshold)
    return summarize(items, version=version, target=target, threshold=threshold)
