"""Retraining: the base dataset plus reviewer labels -> a candidate behind the quality gate.

The evaluation set is frozen: the base dataset's fixed split plus the held-out labels. The
candidate and the production model are both scored on it and compared by
`service.ml.gate.apply_gate`. A passing candidate is promoted when `auto_promote` is on;
otherwise it waits for `POST /models/{version}/promote`.

What it trains and evaluates on is built in `service.training_sets`; a retraining is queued
for a worker, by hand or automatically, in `service.retrain_queue`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from sqlmodel import Session

from service.config import Settings
from service.crud import snapshots as snapshots_crud
from service.db import take_turns
from service.entities import DatasetSnapshot, ModelStatus, ModelVersion
from service.errors import ArtifactError
from service.ml import registry
from service.ml.dataset import (
    examples_hash,
)
from service.ml.encoder import Encoder
from service.ml.gate import apply_gate
from service.ml.pipeline import doubted_labels, review_saved_suspects
from service.ml.production_history import rolled_back_from
from service.ml.runtime import made_with, same_sklearn_release
from service.ml.training import DEFAULT_CONFIG, Progress, TrainResult, evaluate, train
from service.tags import TagSet
from service.training_sets import TrainingSets, build_training_sets

log = logging.getLogger(__name__)

RETRAINING_ACTOR = "retraining job"  # who promotes, in the production history
# Registrations of candidates from the same training rows take turns ("tfrg"; PostgreSQL's
# advisory locks in their two-key form: this class, and a hash of the rows' hash).
_REGISTER_LOCK_CLASS = 0x74667267


def summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline numbers of an evaluation report."""
    if metrics is None:
        return None
    auto = metrics["auto"]
    return {
        "n": metrics["n"],
        "weighted_f1": metrics["weighted_f1"],
        "accuracy": metrics["accuracy"],
        "auto_coverage": auto["coverage"],
        "auto_precision": auto["precision"],
    }


def _promote_if_allowed(
    session: Session,
    *,
    settings: Settings,
    tags: TagSet,
    version: str,
    passed: bool,
    before: str | None,
) -> tuple[bool, str]:
    if not passed:
        return False, "gate failed: waits as a candidate"
    if not settings.auto_promote:
        return False, "gate passed; auto_promote is off: promote by hand"
    current = registry.get_production(session)
    if (current.version if current else None) != before:
        return False, "production changed during training: promote by hand"
    registry.promote(
        session,
        version=version,
        tags=tags,
        artifacts_dir=settings.artifacts_dir,
        actor=RETRAINING_ACTOR,
    )
    return True, "gate passed: promoted"


def _gate(
    production: ModelVersion | None,
    *,
    result: TrainResult,
    sets: TrainingSets,
    encoder: Encoder,
    target: float,
    artifacts_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score production (as it was when training began, at the cut it serves with) on the
    candidate's frozen evaluation set and apply the gate; returns the gate report, with what
    it judged, and production's metrics."""
    prod_metrics, refused = None, None
    if production is not None:
        try:
            model = registry.load_model(production, artifacts_dir=artifacts_dir)
        except ArtifactError as exc:
            # Pickled by a release this one cannot trust (`runtime.load_artifact`), say: the
            # retraining that replaces it must still register its candidate, for an admin.
            refused = str(exc)
        else:
            # As it serves (a cut set by hand or by the audit since training), as `models
            # compare` and `tagflow evaluate` score it: at training's cut, the gate's report
            # showed production accepting what it sends to review.
            cut = registry.serving_threshold(production)
            prod_metrics = evaluate(model, encoder, sets.evaluation, threshold=cut)
    gate = apply_gate(
        result.metrics, prod_metrics, target_precision=target, production_refused=refused
    )
    gate |= {
        "production_version": production.version if production is not None else None,
        "eval_rows": len(sets.evaluation),
        "eval_hash": examples_hash(sets.evaluation),
        "production": summary(prod_metrics),
    }
    return gate, prod_metrics


def _add_snapshot(session: Session, *, sets: TrainingSets) -> DatasetSnapshot:
    """Add (flushed, not committed) the snapshot of the data `sets` were built from."""
    return snapshots_crud.create_snapshot(
        session,
        base_hash=sets.base_hash,
        base_rows=sets.base_rows,
        train_label_ids=sets.train_label_ids,
        holdout_label_ids=sets.holdout_label_ids,
        created_at=sets.read_at,
    )


def _register(
    session: Session,
    *,
    result: TrainResult,
    sets: TrainingSets,
    settings: Settings,
    gate: dict[str, Any],
    reason: str,
    staged: registry.Staged,
) -> tuple[int | None, str, int]:
    """Record the data snapshot and register the candidate with it and its label checks, in
    one transaction (a snapshot with no version would count as the latest for the automatic
    trigger; a version without its checks left them unsent); returns (snapshot id, version,
    label checks sent)."""
    snapshot = _add_snapshot(session, sets=sets)
    checks = doubted_labels(result, settings=settings)
    row = registry.register(
        session,
        result=result,
        artifacts_dir=settings.artifacts_dir,
        snapshot_id=snapshot.id,
        gate=gate,
        note=f"retrain ({reason})",
        label_checks=checks,
        staged=staged,
    )
    return snapshot.id, row.version, len(checks)


def _sets_summary(sets: TrainingSets) -> dict[str, int]:
    return {
        "train_rows": len(sets.train),
        "eval_rows": len(sets.evaluation),
        "train_labels": len(sets.train_label_ids),
        "holdout_labels": len(sets.holdout_label_ids),
        "replaced_base_rows": sets.replaced_base_rows,
        "scarce_tags": sets.scarce_tags,
        "scarce_floors": sets.scarce_floors,
    }


def remakes(
    version: ModelVersion, *, sets: TrainingSets, target_precision: float, encoder: Encoder
) -> bool:
    """Whether training on `sets` now would make `version` again: the same training rows (by
    content and tag) and the same training settings, so the same model (training is seeded);
    the evaluation rows do not change what is learned. Not a version another release of
    scikit-learn made (by its record; one without a record is taken as made here): this one
    may refuse to load it, and a retraining is how it is replaced."""
    same = {
        "target_precision": target_precision,
        "folds": DEFAULT_CONFIG.folds,
        "seed": DEFAULT_CONFIG.seed,
        "encoder": encoder.path.name,
    }
    return (
        version.data_hash == examples_hash(sets.train)
        and all(version.params.get(name) == value for name, value in same.items())
        and same_sklearn_release(made_with(version.params))
    )


def _twin(
    session: Session,
    *,
    production: ModelVersion | None,
    sets: TrainingSets,
    target: float,
    encoder: Encoder,
) -> ModelVersion | None:
    """The version training on `sets` would make again, if it would be production or a version
    production was rolled back from: production's twin changes nothing, and a rolled-back
    version's twin, promoted by the gate it passed before, would undo the rollback."""
    if production is None:
        return None
    rolled_back = [registry.get_version(session, version=v) for v in rolled_back_from(session)]
    for version in (production, *rolled_back):
        if remakes(version, sets=sets, target_precision=target, encoder=encoder):
            return version
    return None


def _registered_twin(
    session: Session,
    *,
    production: ModelVersion,
    sets: TrainingSets,
    target: float,
    encoder: Encoder,
) -> ModelVersion | None:
    """The newest candidate that training on `sets` would make again and gate the same way:
    the same training rows and settings, judged on the same evaluation rows against the same
    production. Training it again would only register its copy: a retraining run again after
    its worker died between registering and promoting (RQ's retry) registered a second
    candidate, and so did two retrainings on the same data with auto-promote off."""
    eval_hash = examples_hash(sets.evaluation)
    for row in registry.list_versions(session, status=ModelStatus.CANDIDATE):
        gate = row.gate or {}
        judged_alike = (
            gate.get("production_version") == production.version
            and gate.get("eval_hash") == eval_hash
            and isinstance(gate.get("passed"), bool)
        )
        if judged_alike and remakes(row, sets=sets, target_precision=target, encoder=encoder):
            return row
    return None


def _finish_registered(
    session: Session,
    *,
    settings: Settings,
    tags: TagSet,
    production: ModelVersion,
    candidate: ModelVersion,
    sets: TrainingSets,
    reason: str,
) -> dict[str, Any]:
    """The result of a retraining whose candidate is registered already (`_registered_twin`):
    nothing trained or registered, and the rest done as the retraining that registered it
    would have, had it not died first: the candidate promoted if its gate passed and the
    settings allow, and, for a candidate registered before its label checks were written with
    it, those checks sent from its saved report (unless they were sent). The snapshot is
    recorded, as for `_nothing_new`, so the automatic retraining counts labels from now."""
    gate = candidate.gate or {}
    snapshot = _add_snapshot(session, sets=sets)
    session.commit()
    checks = review_saved_suspects(session, version=candidate, settings=settings)
    promoted, outcome = _promote_if_allowed(
        session,
        settings=settings,
        tags=tags,
        version=candidate.version,
        passed=bool(gate.get("passed")),
        before=production.version,
    )
    outcome = (
        f"{candidate.version} is registered from the same data and settings, gated on the same "
        f"evaluation against {production.version}: not trained again; {outcome}"
    )
    log.info("retrain (%s): %s", reason, outcome)
    return {
        "candidate": candidate.version,
        "promoted": promoted,
        "outcome": outcome,
        "production_before": production.version,
        "reason": reason,
        "snapshot_id": snapshot.id,
        "gate_passed": gate.get("passed"),
        "failed_checks": gate.get("failed", []),
        "checks": gate.get("checks", []),
        **_sets_summary(sets),
        "label_checks_sent": checks,
        "metrics": {"candidate": summary(candidate.metrics), "production": gate.get("production")},
    }


def _nothing_new(
    session: Session,
    *,
    production: ModelVersion,
    twin: ModelVersion,
    sets: TrainingSets,
    reason: str,
) -> dict[str, Any]:
    """The result of a retraining that would only make production again: nothing trained,
    nothing registered. The snapshot is still recorded, so the automatic retraining counts
    new labels from now, not again from before labels that changed nothing (a reviewer
    confirming a base row's tag gives the same row)."""
    snapshot = _add_snapshot(session, sets=sets)
    session.commit()  # no version to commit it with (`create_snapshot` only flushes)
    outcome = (
        f"nothing new since {production.version}: nothing trained or registered"
        if twin.version == production.version
        else f"the same data and settings made {twin.version}, which production was rolled "
        "back from: nothing trained or registered"
    )
    log.info("retrain (%s): %s", reason, outcome)
    return {
        "candidate": None,
        "promoted": False,
        "outcome": outcome,
        "production_before": production.version,
        "reason": reason,
        "snapshot_id": snapshot.id,
        "gate_passed": None,
        "failed_checks": [],
        "checks": [],
        **_sets_summary(sets),
        "label_checks_sent": 0,
        "metrics": {"candidate": None, "production": None},
    }


def _made_already(
    session: Session,
    *,
    settings: Settings,
    tags: TagSet,
    encoder: Encoder,
    production: ModelVersion | None,
    sets: TrainingSets,
    reason: str,
    force: bool,
    resume: bool,
) -> dict[str, Any] | None:
    """The result of a retraining whose model exists already, None when it must train: what
    production is now (or a version it was rolled back from) would be made again
    (`_nothing_new`), or a candidate made from `sets` is registered, gated against
    `production` (`_finish_registered`); unless `force` (and, for the candidate, not
    `resume`)."""
    if production is None:
        return None
    target = settings.target_precision
    # Production now: a retraining beside this one may have promoted the twin since.
    current = registry.get_production(session)
    twin = (
        None
        if force
        else _twin(session, production=current, sets=sets, target=target, encoder=encoder)
    )
    if current is not None and twin is not None:
        return _nothing_new(session, production=current, twin=twin, sets=sets, reason=reason)
    registered = (
        None
        if force and not resume
        else _registered_twin(
            session, production=production, sets=sets, target=target, encoder=encoder
        )
    )
    if registered is None:
        return None
    return _finish_registered(
        session,
        settings=settings,
        tags=tags,
        production=production,
        candidate=registered,
        sets=sets,
        reason=reason,
    )


def retrain(
    session: Session,
    *,
    settings: Settings,
    tags: TagSet,
    encoder: Encoder,
    reason: str = "manual",
    force: bool = False,
    resume: bool = False,
    progress: Progress = lambda _step: None,
) -> dict[str, Any]:
    """Train a candidate on base data plus labels, gate it against production, register it
    with its snapshot, gate report and label checks (one commit), and promote it when allowed.
    Returns a JSON-able summary. With nothing new since production (same training rows, same
    settings), nothing is trained or registered unless `force`: the candidate would be
    production's twin. Nor when a candidate from the same rows and settings is registered
    already, gated on the same evaluation rows against the same production: that one is
    finished instead (promoted if its gate passed and the settings allow; the label checks of
    one registered before they went with it sent if they were not), as a retraining run again
    after its worker was killed between registering and promoting must do; `resume` (a run of
    the same job again) looks for that candidate even when forced."""
    production = registry.get_production(session)
    before = production.version if production is not None else None
    progress("data")
    sets = build_training_sets(session, settings=settings, tags=tags)
    target = settings.target_precision
    # Looked for before training, and again before registering (below).
    made_already = functools.partial(
        _made_already,
        session,
        settings=settings,
        tags=tags,
        encoder=encoder,
        production=production,
        sets=sets,
        reason=reason,
        force=force,
        resume=resume,
    )
    if (made := made_already()) is not None:
        return made
    result = train(
        sets.train, sets.evaluation, encoder=encoder, target_precision=target, progress=progress
    )
    result.params |= {"source": str(sets.source.resolve()), "reason": reason}
    progress("gate")
    gate, prod_metrics = _gate(
        production,
        result=result,
        sets=sets,
        encoder=encoder,
        target=target,
        artifacts_dir=settings.artifacts_dir,
    )
    progress("register")
    # Written before the turn is taken: on SQLite the turn is the database's write lock, and
    # every other writer would wait while the report's picture is drawn.
    with registry.staged_result(
        session, result=result, artifacts_dir=settings.artifacts_dir, gate=gate
    ) as staged:
        # Another retraining on the same data may have registered its candidate while this
        # one trained (`tagflow retrain` beside a queued job, say): both looked before
        # training and found none. Looked for again with registrations of the same training
        # rows taking turns (until `_register` commits), the second finishes the first's
        # instead of adding its twin.
        session.rollback()  # the reads before training are over: the turn reads what is now
        take_turns(session, cls=_REGISTER_LOCK_CLASS, key=result.data_hash, table=ModelVersion)
        if (made := made_already()) is not None:
            return made
        snapshot_id, version, checks = _register(
            session,
            result=result,
            sets=sets,
            settings=settings,
            gate=gate,
            reason=reason,
            staged=staged,
        )
    promoted, outcome = _promote_if_allowed(
        session,
        settings=settings,
        tags=tags,
        version=version,
        passed=gate["passed"],
        before=before,
    )
    log.info("retrain (%s): %s %s", reason, version, outcome)
    return {
        "candidate": version,
        "promoted": promoted,
        "outcome": outcome,
        "production_before": before,
        "reason": reason,
        "snapshot_id": snapshot_id,
        "gate_passed": gate["passed"],
        "failed_checks": gate["failed"],
        "checks": gate["checks"],
        **_sets_summary(sets),
        "label_checks_sent": checks,
        "metrics": {"candidate": summary(result.metrics), "production": summary(prod_metrics)},
    }
