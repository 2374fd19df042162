"""What a retraining learns from and is judged on: the base dataset's frozen split plus the
current reviewer labels.

Held-out labels only evaluate, the rest train; a label replaces base rows of the same content
in both sets; rows and labels of a tag no longer approved are left out, and a tag of labels
alone too scarce to learn waits (a tag of the base file is learned, as `tagflow train` learns
it from that file). `service.retraining` trains on these sets, `service.comparison` and the label
export read them, and `service.ml.eval_set` rebuilds a version's evaluation set from the same
split.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session

from service.config import Settings
from service.crud import labels as labels_crud
from service.entities import Label
from service.entities.common import utcnow
from service.errors import InvalidInputError
from service.ml import registry
from service.ml.dataset import (
    MIN_PER_TAG,
    MIN_TO_FIT,
    DatasetError,
    Example,
    check_leakage,
)
from service.ml.pipeline import base_split
from service.tags import Tag, TagSet

log = logging.getLogger(__name__)


@dataclass
class TrainingSets:
    """What one retraining trains and evaluates on, with its provenance."""

    train: list[Example]
    evaluation: list[Example]
    source: Path
    base_hash: str
    base_rows: int
    train_label_ids: list[int]
    holdout_label_ids: list[int]
    replaced_base_rows: int
    read_at: datetime
    # Tags with too few training examples to learn (a newly approved tag's first labels): left
    # out of training, with how many each had, until they reach their floor (`learning_floor`).
    scarce_tags: dict[str, int] = field(default_factory=dict)
    # The floor of each of `scarce_tags`, for what a retraining says of them.
    scarce_floors: dict[str, int] = field(default_factory=dict)


def base_source(session: Session, *, settings: Settings) -> Path:
    """The base dataset: configured, else the file the production model was trained from."""
    if settings.base_dataset is not None:
        return settings.base_dataset
    production = registry.get_production(session)
    source = production.params.get("source") if production is not None else None
    if not source:
        raise InvalidInputError(
            "no base dataset: set TAGFLOW_BASE_DATASET (the production model records none)"
        )
    return Path(source)


def _example(label: Label) -> Example:
    return Example(title=label.title, description=label.description, tag=label.tag)


def _usable_labels(session: Session, tags: TagSet) -> list[Label]:
    labels = labels_crud.current_labels(session)
    unusable = [label.id for label in labels if label.tag not in tags]
    if unusable:
        log.warning("labels %s carry tags no longer approved; left out of training", unusable)
    return [label for label in labels if label.tag in tags]


def _base_tags(session: Session, tags: TagSet) -> TagSet:
    """The tags the base file may carry: the approved ones, and those any registered version
    was trained on, which include a tag retired since (its rows are then left out, as its
    labels are), even once production is a version trained without it. Any other tag in the
    file is still an error."""
    known = {
        name for row in registry.list_versions(session) for name in row.params.get("classes", [])
    }
    retired = [Tag(name, "") for name in tags.unapproved(known)]
    return TagSet((*tags.tags, *retired)) if retired else tags


def _approved(
    train: list[Example], evaluation: list[Example], tags: TagSet
) -> tuple[list[Example], list[Example]]:
    """The base split's rows whose tag is still approved; a retired tag's rows are left out,
    with a warning naming it."""
    kept_train = [e for e in train if e.tag in tags]
    kept_eval = [e for e in evaluation if e.tag in tags]
    left_out = [e.tag for e in train + evaluation if e.tag not in tags]
    if left_out:
        log.warning(
            "%d base rows carry tags no longer approved %s; left out of retraining",
            len(left_out),
            sorted(set(left_out)),
        )
    return kept_train, kept_eval


def approved_base_split(
    session: Session, *, source: Path, tags: TagSet
) -> tuple[list[Example], list[Example]]:
    """The base file's frozen train / evaluation split as retraining reads it: rows of a tag
    retired since left out (`ml.eval_set` rebuilds a version's evaluation set from it)."""
    all_train, all_eval, _ = base_split(source, tags=_base_tags(session, tags))
    return _approved(all_train, all_eval, tags)


def learning_floor(tag: str, *, base_tags: set[str]) -> int:
    """The fewest training examples a retraining learns `tag` from.

    A tag of the base file is one `tagflow train` learns from that file, which holds at least
    MIN_PER_TAG of it (or it would not load): retraining learns it too, whatever the frozen
    split leaves in training (8 of a tag's 10 rows), unless labels relabelled its rows away
    below what model selection runs with (MIN_TO_FIT). A tag of labels alone (a newly approved
    one) waits until it has MIN_PER_TAG training examples: a label or two teach nothing."""
    return MIN_TO_FIT if tag in base_tags else MIN_PER_TAG


def _scarce(
    examples: list[Example], *, base_tags: set[str], expected: Iterable[str] = ()
) -> dict[str, int]:
    """The tags of `examples`, and of `expected` (0 when `examples` has none), too scarce to
    learn (under their `learning_floor`), with how many each has: left out of training, their
    labels kept."""
    # Not logged here: whoever retrains says it once (scarce_tag_warning), and a label export,
    # which reads the same sets, has nothing to say about it.
    counts = Counter(dict.fromkeys(expected, 0))
    counts.update(e.tag for e in examples)
    return {
        tag: n for tag, n in sorted(counts.items()) if n < learning_floor(tag, base_tags=base_tags)
    }


def _scarce_tags(
    base_train: list[Example], train_labels: list[Label], *, base_tags: set[str]
) -> dict[str, int]:
    """The tags too scarce to learn, with their training examples (`_scarce`). A tag of labels
    alone is counted first, by its labels: while it waits its labels replace nothing, so the
    base rows they label are then counted under their base tag. Counted as if they replaced
    them, a base tag of 8 training rows, 7 relabelled to a new tag of 7 labels, was "1
    training example(s)" and left out with its 8 rows. (A base tag left out here, under 2,
    may also hold labels of other base rows: those then count for nothing either, which
    leaves a tag out rather than learning one under its floor.) A base tag whose training rows
    labels all relabelled is one, with 0: it was left out unsaid."""
    of_labels_alone = [_example(label) for label in train_labels if label.tag not in base_tags]
    waiting = _scarce(of_labels_alone, base_tags=base_tags)
    replacing = [label for label in train_labels if label.tag not in waiting]
    learned = _unlabelled(base_train, replacing) + [_example(label) for label in replacing]
    scarce = waiting | _scarce(learned, base_tags=base_tags, expected=base_tags)
    return dict(sorted(scarce.items()))


def _unlabelled(rows: list[Example], labels: list[Label]) -> list[Example]:
    """`rows` less those of a content one of `labels` labels (the label replaces them)."""
    labelled = {label.text_hash for label in labels}
    return [e for e in rows if e.text_hash not in labelled]


def scarce_tag_warning(tag: str, count: int, *, floor: int) -> str:
    """What a retraining says of a tag left out of training for too few examples (`floor`,
    its `learning_floor`)."""
    return (
        f"tag {tag!r} has {count} training example(s): left out of training until it has "
        f"{floor} (its labels are kept)"
    )


def scarce_tag_warnings(outcome: dict[str, Any]) -> list[str]:
    """What a retraining's result (`retraining.retrain`) says of its scarce tags: the CLI
    prints it, the retraining job logs it."""
    floors = outcome["scarce_floors"]
    return [
        scarce_tag_warning(tag, count, floor=floors[tag])
        for tag, count in outcome["scarce_tags"].items()
    ]


def build_training_sets(session: Session, *, settings: Settings, tags: TagSet) -> TrainingSets:
    """Base split plus current labels: held-out labels only evaluate, the rest train; a label
    replaces base rows of the same content in both sets (one of a tag left out as scarce, once
    its tag is learned).

    A label on the content of a base training row trains, even when its hash holds it out (a
    label check on a training row, say): every model trained on the base has learned that
    content, so evaluating on it would favour production over the candidate in the gate."""
    read_at = utcnow()
    source = base_source(session, settings=settings)
    all_train, all_eval, _ = base_split(source, tags=_base_tags(session, tags))
    base_train, base_eval = _approved(all_train, all_eval, tags)
    labels = _usable_labels(session, tags)
    trained_content = {e.text_hash for e in all_train}

    def evaluates(label: Label) -> bool:
        return label.holdout and label.text_hash not in trained_content

    holdout_labels = [label for label in labels if evaluates(label)]
    train_labels = [label for label in labels if not evaluates(label)]
    base_tags = {e.tag for e in base_train + base_eval}
    scarce = _scarce_tags(base_train, train_labels, base_tags=base_tags)
    # A label of a tag left out waits, replacing nothing meanwhile: its content trains and
    # evaluates as the base file tags it. It dropped the base row, though no label the snapshot
    # records replaced it, and `ml.eval_set` could not rebuild the version's evaluation set.
    train_labels = [label for label in train_labels if label.tag not in scarce]
    kept_train = _unlabelled(base_train, train_labels + holdout_labels)
    kept_eval = _unlabelled(base_eval, train_labels + holdout_labels)
    train = kept_train + [_example(label) for label in train_labels]
    sets = TrainingSets(
        train=[e for e in train if e.tag not in scarce],
        evaluation=kept_eval + [_example(label) for label in holdout_labels],
        source=source,
        base_hash=registry.sha256_file(source),
        base_rows=len(all_train) + len(all_eval),
        train_label_ids=[label.id for label in train_labels if label.id is not None],
        holdout_label_ids=[label.id for label in holdout_labels if label.id is not None],
        replaced_base_rows=len(base_train) + len(base_eval) - len(kept_train) - len(kept_eval),
        read_at=read_at,
        scarce_tags=scarce,
        scarce_floors={tag: learning_floor(tag, base_tags=base_tags) for tag in scarce},
    )
    leaked = check_leakage(sets.train, sets.evaluation)
    if leaked:
        raise DatasetError(f"{leaked} evaluation items also appear in the training data")
    return sets


def held_out_label_ids(session: Session, *, settings: Settings, tags: TagSet) -> set[int] | None:
    """The labels the next retraining would hold out to evaluate, by its own rule (a label on a
    base training row trains, whatever its hash says); None when that cannot be told (no base
    dataset, or one that does not load), for the caller to fall back on the hash alone."""
    try:
        return set(build_training_sets(session, settings=settings, tags=tags).holdout_label_ids)
    except (InvalidInputError, DatasetError, OSError) as exc:
        log.warning("held-out labels told by hash alone: %s", exc)
        return None
