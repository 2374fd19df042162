"""Recalibrating the auto-acceptance threshold from the audit sample's labels.

Training picks the threshold on out-of-fold predictions; live traffic can be harder (new
topics, drift) or easier. The audit sample is a uniform sample of every prediction, accepted
or not (crud/predictions.review_reason), so its labels measure live precision at the served
cut and at any other without bias.

- RAISE: when the 95% interval of the audited items at or above the cut lies wholly below the
  target, the cut goes up to the lowest confidence at which the audited items above it reach
  the target. Fewer items are accepted; more reach a human.
- LOWER: when a lower cut reaches the target with 95% confidence (the Wilson lower bound of
  the audited items at or above it, and the point precision of every stricter cut), the cut
  goes down to it. More items are accepted, on evidence, not on hope. Precision comes first,
  so lowering asks for the interval's lower end at the target, raising only for its upper end
  below it; `TAGFLOW_RECALIBRATE_LOWER=false` turns lowering off.

An admin can still set any cut by hand (`PUT /models/{version}/threshold`).
"""

from __future__ import annotations

import logging
from enum import StrEnum

import numpy as np
from sqlmodel import Session, SQLModel

from service.config import Settings
from service.crud.audit import AuditStats, audited, summarize, wilson_interval
from service.ml import registry
from service.ml.evaluation import acceptance_support, choose_threshold

log = logging.getLogger(__name__)


class CalibrationAction(StrEnum):
    WAIT = "wait"  # too few labelled audit items above the cut to judge
    KEEP = "keep"  # the audit does not show precision below target
    RAISE = "raise"  # it does: the cut goes up
    LOWER = "lower"  # a lower cut reaches the target with 95% confidence: the cut goes down


class Recalibration(SQLModel):
    """What the audit says about a version's served cut, and what was (or would be) done."""

    version: str
    action: CalibrationAction
    current: float
    proposed: float
    applied: bool
    reason: str
    audit: AuditStats  # the audited items at or above the current cut
    at_proposed: AuditStats | None = None  # ... and at or above the proposed one, if it moves


def recalibrate(
    session: Session,
    *,
    version: str,
    target: float,
    min_audited: int,
    apply: bool,
    lower: bool = True,
) -> Recalibration:
    """Judge `version`'s served cut by its audit sample and, if `apply`, raise it when the
    audit shows precision below `target`, or lower it (with `lower`) when it shows a lower cut
    reaching the target."""
    # Applying, the cut is judged as it is and no other change of it interleaves (an admin's
    # PUT meanwhile was overwritten by a move decided on the cut before it).
    read = registry.lock_thresholds if apply else registry.get_version
    current = registry.serving_threshold(read(session, version=version))
    every = audited(session, version=version)
    items = [(c, ok) for c, ok in every if c >= current]
    stats = summarize(items, version=version, target=target, threshold=current)
    action, proposed, reason = _decide(stats, items, current=current, min_audited=min_audited)
    if lower and action is not CalibrationAction.RAISE:
        floor = lowest_supported_cut(every, target=target, min_audited=min_audited)
        if floor is not None and floor < current:
            action, proposed = CalibrationAction.LOWER, floor
            reason = f"the audited items at or above {floor:.4f} reach {target} with 95% confidence"
    at_proposed = None
    if proposed != current:
        moved = [(c, ok) for c, ok in every if c >= proposed]
        at_proposed = summarize(moved, version=version, target=target, threshold=proposed)
    applied = False
    if apply and at_proposed is not None:
        # The evidence is what decided: the shortfall at the old cut, or the support at the new.
        evidence = stats if action is CalibrationAction.RAISE else at_proposed
        _apply(session, version=version, action=action, cut=proposed, evidence=evidence)
        applied = True
    return Recalibration(
        version=version,
        action=action,
        current=current,
        proposed=proposed,
        applied=applied,
        reason=reason,
        audit=stats,
        at_proposed=at_proposed,
    )


def recalibrate_as_configured(
    session: Session, *, version: str, settings: Settings, apply: bool
) -> Recalibration:
    """`recalibrate` with the service's target, audit minimum and lowering switch: what the
    watch loop, the API and the CLI each run."""
    return recalibrate(
        session,
        version=version,
        target=settings.target_precision,
        min_audited=settings.recalibrate_min_audited,
        lower=settings.recalibrate_lower,
        apply=apply,
    )


def _apply(
    session: Session,
    *,
    version: str,
    action: CalibrationAction,
    cut: float,
    evidence: AuditStats,
) -> None:
    """Serve `cut`, with the audit figures that decided it kept in the cut's history."""
    registry.set_serving_threshold(
        session,
        version=version,
        threshold=cut,
        evidence={
            "source": "audit",
            "action": action.value,
            "measured_at": evidence.threshold,
            "audited": evidence.audited,
            "agreed": evidence.agreed,
            "precision": evidence.precision,
            "precision_lower_95": evidence.precision_lower_95,
        },
    )
    log.warning(
        "auto threshold of %s: %s to %.4f; audit precision %s on %d items at or above %s",
        version,
        action.value,
        cut,
        evidence.precision,
        evidence.audited,
        evidence.threshold,
    )


def lowest_supported_cut(
    items: list[tuple[float, bool]], *, target: float, min_audited: int
) -> float | None:
    """The lowest confidence cut at which the audited `items` above it show precision >=
    `target` with 95% confidence (Wilson lower bound), there are at least `min_audited` of
    them, and every stricter cut reaches the target too (point precision, as
    choose_threshold). None when no cut qualifies."""
    if len(items) < min_audited:
        return None
    conf = np.array([c for c, _ in items])
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], np.array([ok for _, ok in items])[order]
    floor = choose_threshold(conf, correct, target=target, min_support=support(target, len(items)))
    agreed = np.cumsum(correct)
    best = None
    for k in range(min_audited - 1, len(conf)):
        if conf[k] < floor:
            break
        if k + 1 < len(conf) and conf[k + 1] == conf[k]:
            continue  # a cut between equal confidences would not accept exactly 0..k
        interval = wilson_interval(int(agreed[k]), k + 1)
        if interval is not None and interval[0] >= target:
            best = float(conf[k])
    return best


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
    least = support(stats.target, len(items))
    cut = choose_threshold(conf, correct, target=stats.target, min_support=least)
    proposed = max(current, cut)
    shortfall = (
        f"audit precision {stats.precision:.3f} (95% interval below {stats.target}) on "
        f"{stats.audited} items"
    )
    return CalibrationAction.RAISE, proposed, f"{shortfall}; {_raised_to(proposed, least, stats)}"


def support(target: float, audited: int) -> int:
    """The fewest audited items above a cut it is judged from, as training judges its own
    (`choose_acceptance_cut`): from where one wrong item is within the target (100 at 0.99)
    when that many were audited, else from the 20th (all of them when fewer). From the 20th
    alone, one confident item labelled wrong among the first 20 (a reviewer's slip) made a
    raise send everything to review and kept the cut from ever being lowered."""
    evidence = acceptance_support(target)
    return evidence if audited >= evidence else min(20, audited)


def _raised_to(proposed: float, support: int, stats: AuditStats) -> str:
    """What the raised cut rests on: the audited items above it, or none when no cut with
    `support` of them reaches the target (1.01, which accepts nothing)."""
    if proposed > 1.0:
        return (
            f"no cut with at least {support} audited items above it reaches {stats.target}: "
            f"everything goes to review ({proposed})"
        )
    return f"the audited items at or above {proposed:.4f} reach the target"
