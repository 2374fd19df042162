"""Whether the runtime running now can serve registry versions (`tagflow models check`).

Run before an upgrade (with the new release, against the registry) and after: each version is
loaded as the API would load it (checksum, then `runtime.load_artifact`) and scores a few fixed
items through both heads, so a version its new runtime refuses, or that loads but fails to
score, is known before production or a rollback needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from service.entities import ModelStatus, ModelVersion
from service.errors import ArtifactError
from service.ml import production_history, registry
from service.ml.encoder import Encoder
from service.ml.runtime import made_with

# One item for each tag of the bundled list, scored with the fast path off, so that the
# embedding head and the encoder are exercised too.
PROBES = (
    "Fine-tuning a transformer for named entity recognition in clinical notes",
    "Real-time object detection on video streams with a convolutional network",
    "Serving, monitoring and versioning models in production with a feature store",
    "A survey of graph algorithms for recommending friends",
)


@dataclass
class VersionCheck:
    """One version as this runtime finds it: loaded and scored, or refused and why."""

    version: str
    status: ModelStatus
    made_with: dict[str, str] | None  # None: registered before the runtime was recorded
    loads: bool
    refused: str | None = None
    notes: list[str] = field(default_factory=list)  # warnings of a load that was not refused
    answers: list[dict[str, Any]] = field(default_factory=list)  # the probes' tags

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"status": self.status.value}


def versions_to_check(session: Session) -> list[ModelVersion]:
    """Production and the versions rollbacks in a row would restore, in that order."""
    production = registry.get_production(session)
    if production is None:
        return []
    names = [v for v in production_history.rollback_targets(session) if v != production.version]
    return [production, *(registry.get_version(session, version=v) for v in names)]


def check_version(row: ModelVersion, *, artifacts_dir: Path, encoder: Encoder) -> VersionCheck:
    """Load `row` as serving would and score the probes with it."""
    check = VersionCheck(row.version, row.status, made_with(row.params), loads=False)
    try:
        model, check.notes = registry.load_model_noting(row, artifacts_dir=artifacts_dir)
    except ArtifactError as exc:
        check.refused = str(exc)
        return check
    try:
        proba = model.predict_proba(list(PROBES), encoder.encode, fast_path=False)
    except Exception as exc:  # whatever scoring raises, serving would raise it per request
        # The load scored a probe through both heads already (`TagModel.probe`, refused above
        # as ArtifactError): what fails here is this runtime's encoder feeding the model (an
        # embedding of another width than the one it was trained on, say).
        check.refused = (
            f"{row.version} loads but cannot score this runtime's embeddings "
            f"({type(exc).__name__}: {exc})"
        )
        return check
    check.loads = True
    check.answers = [
        {
            "text": text,
            "tag": model.classes[int(scores.argmax())],
            "confidence": round(float(scores.max()), 6),
        }
        for text, scores in zip(PROBES, proba, strict=True)
    ]
    return check
