"""The evaluation set a version was judged on, rebuilt from its lineage, for people to score it
again (`tagflow models eval-set V --out FILE`, then `tagflow evaluate --data FILE`).

A version's recorded metrics are its scores on that set: the base file's frozen held-out split
(less contents a label replaced) plus the held-out labels of its snapshot. Nothing gave it back:
the base split lives only in code, so reproducing a recorded figure took Python. The set is
rebuilt as retraining built it and checked against the hash the version recorded, so a base
file edited since, or tags retired since, is an error rather than a quietly different set.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from service.crud.snapshots import get_snapshot
from service.entities import Label, ModelVersion
from service.errors import InvalidInputError
from service.ml.dataset import Example, examples_hash
from service.ml.pipeline import base_split
from service.ml.registry import sha256_file
from service.tags import TagSet
from service.training_sets import approved_base_split


def _source(version: ModelVersion) -> Path:
    source = version.params.get("source")
    if not source:
        raise InvalidInputError(
            f"{version.version} records no training file (an imported version: its evaluation "
            "set is its source deployment's)"
        )
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"{version.version}'s training file {path} is not there")
    return path


def _labels(session: Session, ids: list[int]) -> list[Label]:
    rows = [session.get(Label, label_id) for label_id in ids]
    missing = [label_id for label_id, row in zip(ids, rows, strict=True) if row is None]
    if missing:
        raise InvalidInputError(f"labels {missing} of the snapshot are no longer stored")
    return [row for row in rows if row is not None]


def _rebuilt(session: Session, *, version: ModelVersion, tags: TagSet) -> list[Example]:
    source = _source(version)
    if version.dataset_snapshot_id is None:  # `tagflow train`: the file's own split
        return base_split(source, tags=tags)[1]
    snapshot = get_snapshot(session, snapshot_id=version.dataset_snapshot_id)
    if sha256_file(source) != snapshot.base_hash:
        raise InvalidInputError(
            f"{source} has changed since {version.version} was trained (its hash is not the "
            "snapshot's): its evaluation set cannot be rebuilt"
        )
    _, base_eval = approved_base_split(session, source=source, tags=tags)
    labels = _labels(session, [*snapshot.train_label_ids, *snapshot.holdout_label_ids])
    labelled = {label.text_hash for label in labels}
    held_out = set(snapshot.holdout_label_ids)
    return [e for e in base_eval if e.text_hash not in labelled] + [
        Example(label.title, label.description, label.tag)
        for label in labels
        if label.id in held_out
    ]


def evaluation_set(session: Session, *, version: ModelVersion, tags: TagSet) -> list[Example]:
    """The items `version` was evaluated on when it was trained, checked against the hash it
    recorded; an InvalidInputError says why they cannot be rebuilt."""
    recorded = version.params.get("eval_hash")
    examples = _rebuilt(session, version=version, tags=tags)
    if recorded is not None and examples_hash(examples) != recorded:
        raise InvalidInputError(
            f"the rebuilt evaluation set of {version.version} ({len(examples)} items) is not the "
            f"one it recorded ({version.params.get('eval_rows')} items, by hash): its training "
            "file or the approved tags changed since"
        )
    return examples
