"""Train-and-register: the one path from a data file to a registry version (CLI and jobs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from service.config import Settings
from service.crud.predictions import add_label_checks, label_checks_sent
from service.entities import ModelVersion
from service.logs import exception_line
from service.ml import registry
from service.ml.dataset import Example, ValidationReport, load_training_file
from service.ml.encoder import Encoder
from service.ml.training import (
    DEFAULT_CONFIG,
    Progress,
    TrainConfig,
    TrainResult,
    split_examples,
    train,
)
from service.tags import TagSet

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    version: ModelVersion
    result: TrainResult
    validation: ValidationReport


def base_split(
    path: Path, *, tags: TagSet, config: TrainConfig = DEFAULT_CONFIG
) -> tuple[list[Example], list[Example], ValidationReport]:
    """The base dataset's frozen train / evaluation split (same seed, same split, every time)."""
    examples, report = load_training_file(path, tags=tags)
    train_set, eval_set = split_examples(examples, share=config.eval_share, seed=config.seed)
    return train_set, eval_set, report


def train_file(
    session: Session,
    *,
    path: Path,
    settings: Settings,
    tags: TagSet,
    encoder: Encoder,
    promote_by: str | None = None,
    progress: Progress = lambda _s: None,
) -> Outcome:
    """Validate `path`, train on its train split, evaluate on the rest, register the result;
    promote it, recording `promote_by` as who did, if given."""
    progress("validate")
    train_set, eval_set, report = base_split(path, tags=tags)
    result = train(
        train_set,
        eval_set,
        encoder=encoder,
        target_precision=settings.target_precision,
        progress=progress,
    )
    result.params["source"] = str(path.resolve())
    progress("register")
    version = registry.register(
        session,
        result=result,
        artifacts_dir=settings.artifacts_dir,
        label_checks=doubted_labels(result, settings=settings),
    )
    if promote_by is not None:
        version = registry.promote(
            session,
            version=version.version,
            tags=tags,
            artifacts_dir=settings.artifacts_dir,
            actor=promote_by,
        )
    return Outcome(version=version, result=result, validation=report)


def doubted_labels(result: TrainResult, *, settings: Settings) -> list[dict[str, Any]]:
    """The training rows whose label `result`'s model doubts (ml/suspects.py), to send to
    review with its version (`registry.register`); none when the settings say not to."""
    if not settings.review_suspects:
        return []
    return list(result.cv["suspect_labels"]["items"])


def review_saved_suspects(session: Session, *, version: ModelVersion, settings: Settings) -> int:
    """Send the label checks of a `version` registered before they were written with it (no
    `registry.LABEL_CHECKS` in its params) from its saved report, unless they were sent
    already: what a retraining that died between registering the version and sending them
    left undone, for the run that finishes it. They are then recorded in the version, in the
    same commit, so it is never asked again. Never a check twice; how many were sent.

    Versions registered since carry their checks (`registry.register`): nothing to do."""
    if registry.LABEL_CHECKS in version.params or not settings.review_suspects:
        return 0
    already = label_checks_sent(session, version=version.version)
    items: list[dict[str, Any]] = []
    if not already:
        saved = _saved_suspects(version, settings=settings)
        if saved is None:
            return 0
        items = saved
        add_label_checks(session, suspects=items, version=version.version)
    # A new dict: SQLAlchemy does not see in-place changes to a JSON column.
    version.params = {**version.params, registry.LABEL_CHECKS: already or len(items)}
    session.add(version)
    session.commit()
    return len(items)


def _saved_suspects(version: ModelVersion, *, settings: Settings) -> list[dict[str, Any]] | None:
    """The doubted labels listed in `version`'s saved report; None, logged, when it lists none
    that can be read."""
    try:
        report = registry.saved_report(version, artifacts_dir=settings.artifacts_dir)
        return list(report["cv"]["suspect_labels"]["items"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "%s: label checks not sent, its saved report does not list them: %s",
            version.version,
            exception_line(exc),
        )
        return None
