"""Recalibrating the auto-acceptance threshold from the audit sample's labels.

Training picks the threshold on out-of-fold predictions; live traffic can be harder (new
topics, drift). The audit sample measures live precision without bias. When its 95% interval
lies wholly below the target, the served cut is raised to the lowest confidence at which the
audited items above it reach the target, so fewer items are accepted and more reach a human.

Only raising is automatic, because precision comes first. Lowering the cut would need labels
for the items below it. Those are review items, labelled in priority order, so they are a
biased sample. An admin can still set any cut by hand (`PUT /models/{version}/threshold`).
"""

from __future__ import annotations

import logging
from enum import StrEnum

import numpy as np
from sqlmodel import Session, SQLModel

from service.crud.audit import AuditStats, audited, summarize
from service.ml import registry
from service.ml.evaluation import choose_threshold

log = logging.getLogger(__name__)


class CalibrationAction(StrEnum):
    WAIT = "wait"  # too few labelled audit items above the cut to judge
    KEEP = "keep"  # the audit does not show precision below target
    RAISE = "raise"  # it does: the cut goes up


class Recalibration(SQLModel):
    """What the audit says about a version's served cut, and what was (or would be) done."""

    version: str
    action: CalibrationAction
    current: float
    proposed: float
    applied: bool
    reason: str
    audit: AuditStats


def recalibrate(
    session: Session, *, version: str, target: float, min_audited: int, apply: bool
) -> Recalibration:
    """Judge `version`'s served cut by its audit sample and, if `apply`, raise it when the
    audit shows precision below `target`."""
    row = registry.get_version(session, version=version)
    current = registry.serving_threshold(row)
    items = audited(session, version=version, threshold=current)
    stats = summarize(items, version=version, target=target, threshold=current)
    action, proposed, reason = _decide(stats, items, current=current, min_audited=min_audited)
    applied = False
    if apply and action is CalibrationAction.RAISE:
        evidence = {
            "source": "audit",
            "audited": stats.audited,
            "agreed": stats.agreed,
            "precision": stats.precision,
        }
        registry.set_serving_threshold(
            session, version=version, threshold=proposed, evidence=evidence
        )
        applied = True
        log.warning(
            "auto threshold of %s raised %.4f -> %.4f: audit precision %s on %d items",
            version,
            current,
            proposed,
            stats.precision,
            stats.audited,
        )
    return Recalibration(
        version=version,
        action=action,
        current=current,
        proposed=proposed,
        applied=applied,
        reason=reason,
        audit=stats,
    )


def _decide(
    stats: AuditStats, items: list[tuple[float, bool]], *, current: float, min_audited: int
) -> tuple[CalibrationAction, float, str]:
    if stats.audited < min_audited:
        return (
            CalibrationAction.WAIT,
            current,
            f"{stats.audited} labelled audit items at or above the cut; {min_audited} needed",
        )
    if stats.meets_target is not False:
        return (
            CalibrationAction.KEEP,
            current,
            f"audit precision {stats.precision:.3f} is not below the target with 95% confidence",
        )
    conf = np.array([c for c, _ in items])
    correct = np.array([ok for _, ok in items])
    # Each stricter cut must reach the target too (choose_threshold); 1.01 sends all to review.
    cut = choose_threshold(conf, correct, target=stats.target, min_support=min(20, len(items)))
    proposed = max(current, cut)
    return (
        CalibrationAction.RAISE,
        proposed,
        f"audit precision {stats.precision:.3f} (95% interval below {stats.target}) on "
        f"{stats.audited} items; the audited items at or above {proposed:.4f} reach the target",
    )
