"""What a retraining trains and evaluates on (`service.training_sets`): base rows replaced by
labels of the same content, held-out labels that only evaluate, newly approved and retired
tags, and the label export's held-out mark, which must agree with retraining's. Real labels
in the real database, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service import retraining, training_sets
from service.api.main import create_app
from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, Settings
from service.crud import labels as labels_crud
from service.entities import Label
from service.errors import InvalidInputError
from service.ml import eval_set, registry
from service.ml.dataset import (
    MIN_PER_TAG,
    MIN_TO_FIT,
    DatasetError,
    Example,
    check_leakage,
    load_dataset,
)
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, train
from service.tags import Tag, TagSet
from tests.conftest import auth, register_promoted


def rotated(example: Example, tags: TagSet) -> Example:
    """The same content with the next approved tag: a wrong label."""
    names = tags.names
    return Example(
        example.title, example.description, names[(names.index(example.tag) + 1) % len(names)]
    )


def add_labels(engine: Engine, examples: list[Example], *, share: float) -> list[Label]:
    """Labels as reviewers create them (`share` decides the held-out ones by content hash)."""
    with Session(engine, expire_on_commit=False) as session:
        rows = [
            labels_crud.append_label(
                session,
                text_hash=e.text_hash,
                title=e.title,
                description=e.description,
                tag=e.tag,
                reviewer="rev",
                holdout_share=share,
            )
            for e in examples
        ]
        session.commit()
    return rows


def test_training_sets_labels_replace_base_rows_and_holdouts_only_evaluate(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    new_items: list[Example],
    seed_result: TrainResult,
) -> None:
    settings = make_settings()
    base_train, base_eval, _ = base_split(SEED_DATASET, tags=tags)
    relabel_train, relabel_eval = rotated(base_train[0], tags), rotated(base_eval[0], tags)
    trained = add_labels(engine, [relabel_train, relabel_eval, new_items[0]], share=0.0)
    held_out = add_labels(engine, [new_items[1], new_items[2]], share=0.9999)
    # A correction supersedes the first label of new_items[0]: only the current one counts.
    corrected = add_labels(engine, [rotated(new_items[0], tags)], share=0.0)[0]
    with Session(engine, expire_on_commit=False) as session:
        session.add(
            Label(
                text_hash="f" * 64, title="Retired", description="", tag="retired", reviewer="rev"
            )
        )
        session.commit()
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)

    assert sets.base_rows == len(base_train) + len(base_eval) and sets.replaced_base_rows == 2
    assert len(sets.train) == len(base_train) - 1 + 3
    assert len(sets.evaluation) == len(base_eval) - 1 + 2
    assert relabel_train in sets.train and base_train[0] not in sets.train
    assert relabel_eval in sets.train and base_eval[0] not in sets.evaluation
    assert rotated(new_items[0], tags) in sets.train and new_items[0] not in sets.train
    assert new_items[1] in sets.evaluation and new_items[1] not in sets.train
    assert all(e.tag in tags for e in sets.train + sets.evaluation)
    assert check_leakage(sets.train, sets.evaluation) == 0
    assert sets.train_label_ids == [trained[0].id, trained[1].id, corrected.id]
    assert sets.holdout_label_ids == [row.id for row in held_out]
    assert sets.base_hash == registry.sha256_file(SEED_DATASET)

    # Without a configured base dataset, the production model's own source is used.
    with Session(engine) as session, pytest.raises(InvalidInputError, match="no base dataset"):
        training_sets.base_source(session, settings=make_settings(base_dataset=None))
    register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        assert training_sets.base_source(session, settings=make_settings(base_dataset=None)) == (
            SEED_DATASET
        )


def test_held_out_labels_on_base_training_rows_train_instead_of_evaluating(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    new_items: list[Example],
) -> None:
    """A label check confirms or corrects a training row; were it held out, production (which
    trained on that row) would be scored on its own training data, and the gate would lean its
    way. Such a label replaces the row in training; held-out labels on new content evaluate."""
    settings = make_settings()
    base_train, base_eval, _ = base_split(SEED_DATASET, tags=tags)
    confirmed, corrected = base_train[0], rotated(base_train[1], tags)
    labels = add_labels(engine, [confirmed, corrected, base_eval[0], new_items[0]], share=0.9999)
    assert all(label.holdout for label in labels)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)

    trained_by_production = {e.text_hash for e in base_train}
    assert not [e for e in sets.evaluation if e.text_hash in trained_by_production]
    assert confirmed in sets.train and corrected in sets.train and base_train[1] not in sets.train
    assert base_eval[0] in sets.evaluation and new_items[0] in sets.evaluation
    assert sets.train_label_ids == [labels[0].id, labels[1].id]
    assert sets.holdout_label_ids == [labels[2].id, labels[3].id]
    assert len(sets.train) == len(base_train) and len(sets.evaluation) == len(base_eval) + 1
    assert check_leakage(sets.train, sets.evaluation) == 0


def test_a_newly_approved_tag_waits_until_it_has_enough_labels_to_learn(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
) -> None:
    """An admin approves a new tag and reviewers start using it. With one label of it,
    training crashed in model selection (a fold with no example of the tag: "shape
    mismatch"), so every retraining failed until a second label came; with two, the model
    learned a tag from two examples. The tag is left out of training, its labels kept, until
    it has MIN_PER_TAG examples, as `tagflow train` asks of a file."""
    graphs = TagSet((*tags.tags, Tag("graphs", "Graph neural networks and graph learning.")))
    items = [
        Example(
            f"Graph network {i}", f"Message passing over molecule graphs, variant {i}.", "graphs"
        )
        for i in range(MIN_PER_TAG)
    ]
    first = add_labels(engine, items[:1], share=0.0)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=make_settings(), tags=graphs)
    assert sets.scarce_tags == {"graphs": 1} and sets.scarce_floors == {"graphs": MIN_PER_TAG}
    assert first[0].id not in sets.train_label_ids and items[0] not in sets.train
    result = train(sets.train, sets.evaluation, encoder=encoder, target_precision=0.99)
    assert "graphs" not in result.model.classes  # trained, on the other tags

    rest = add_labels(engine, items[1:], share=0.0)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=make_settings(), tags=graphs)
    assert sets.scarce_tags == {}
    assert sets.train_label_ids == [row.id for row in first + rest]
    assert sum(e.tag == "graphs" for e in sets.train) == MIN_PER_TAG


def test_a_label_waiting_for_its_tag_replaces_no_base_row_and_the_eval_set_is_rebuilt(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
) -> None:
    """A reviewer's first labels of a newly approved tag, on base rows (the README's advice for
    rows about the new topic), are left out as scarce, and still dropped the base rows they
    label from training and evaluation. No label the snapshot records replaced them, so the
    version's evaluation set, rebuilt from its snapshot (`tagflow models eval-set`), had one
    row more than it recorded (65 against 64) and was refused. Such a label now replaces
    nothing until its tag is learned: its content trains and evaluates as the base tags it."""
    graphs = TagSet((*tags.tags, Tag("graphs", "Graph neural networks and graph learning.")))
    base_train, base_eval, _ = base_split(SEED_DATASET, tags=tags)
    waiting = [Example(e.title, e.description, "graphs") for e in (base_train[0], base_eval[0])]
    labels = add_labels(engine, waiting, share=0.0)
    assert not any(label.holdout for label in labels)
    settings = make_settings()
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=graphs, encoder=encoder)
        version = registry.get_version(session, version=outcome["candidate"])
        rebuilt = eval_set.evaluation_set(session, version=version, tags=graphs)
        sets = training_sets.build_training_sets(session, settings=settings, tags=graphs)
    assert outcome["scarce_tags"] == {"graphs": 2} and outcome["train_labels"] == 0
    assert rebuilt == sets.evaluation == base_eval
    assert sets.train == base_train and sets.replaced_base_rows == 0


def small_base_file(path: Path, source: Path, *, tags: TagSet, per_tag: dict[str, int]) -> Path:
    """A training file of the first `per_tag[tag]` rows of each tag of `source`."""
    examples, _ = load_dataset(source, tags=tags)
    rows = [e for tag, n in per_tag.items() for e in [e for e in examples if e.tag == tag][:n]]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(("title", "description", "tag"))
        writer.writerows((e.title, e.description, e.tag) for e in rows)
    return path


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_a_tag_of_the_base_file_is_learned_by_retraining_as_by_train(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    shared_dataset: Path,
    encoder: Encoder,
    tmp_path: Path,
) -> None:
    """`tagflow train` asks MIN_PER_TAG rows of a tag of the whole file, then trains on its
    split's training part: a tag of 10 rows is learned from 8. Retraining asked MIN_PER_TAG of
    that training part, so on the same file it left the tag out as scarce ({'mlops': 8}): a
    candidate that never answers a tag production answers, failed by the gate every time.
    A tag of the base file is now learned while model selection can run (MIN_TO_FIT)."""
    per_tag = {"mlops": MIN_PER_TAG, "computer-vision": 40, "natural-language-processing": 40}
    source = small_base_file(tmp_path / "base.csv", shared_dataset, tags=tags, per_tag=per_tag)
    settings = make_settings(base_dataset=source)
    base_train, base_eval, _ = base_split(source, tags=tags)
    mlops_train = [e for e in base_train if e.tag == "mlops"]
    assert len(mlops_train) == 8  # what `tagflow train` learns the tag from
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)
    assert sets.scarce_tags == {} and sets.train == base_train  # what `tagflow train` trained on

    def relabelled(rows: list[Example]) -> list[Example]:
        return [Example(e.title, e.description, "computer-vision") for e in rows]

    # Reviewers relabel its training rows but two: still learned, and training runs.
    add_labels(engine, relabelled(mlops_train[2:]), share=0.0)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)
    assert sets.scarce_tags == {} and sum(e.tag == "mlops" for e in sets.train) == MIN_TO_FIT
    result = train(sets.train, sets.evaluation, encoder=encoder, target_precision=0.99)
    assert "mlops" in result.model.classes

    # All but one: model selection cannot run with one, so it waits, and says until when.
    add_labels(engine, relabelled(mlops_train[1:2]), share=0.0)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)
    assert sets.scarce_tags == {"mlops": 1} and sets.scarce_floors == {"mlops": MIN_TO_FIT}
    assert "mlops" not in {e.tag for e in sets.train}
    outcome = {"scarce_tags": sets.scarce_tags, "scarce_floors": sets.scarce_floors}
    assert training_sets.scarce_tag_warnings(outcome) == [
        "tag 'mlops' has 1 training example(s): left out of training until it has 2 "
        "(its labels are kept)"
    ]


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_labels_waiting_for_their_tag_leave_the_base_tag_they_relabel_learned(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    shared_dataset: Path,
    tmp_path: Path,
) -> None:
    """Reviewers relabelling base rows to a newly approved tag (the README's advice for rows
    about the new topic) with fewer labels than it needs: the labels wait and replace nothing,
    so the rows still train under their base tag. Scarcity was counted as if they replaced
    them: a base tag of 8 training rows, 7 of them so relabelled, was "1 training example(s)",
    left out (its 8 rows too), and every candidate lost a tag production answers."""
    per_tag = {"mlops": MIN_PER_TAG, "computer-vision": 40, "natural-language-processing": 40}
    source = small_base_file(tmp_path / "base.csv", shared_dataset, tags=tags, per_tag=per_tag)
    settings = make_settings(base_dataset=source)
    graphs = TagSet((*tags.tags, Tag("graphs", "Graph neural networks and graph learning.")))
    base_train, _, _ = base_split(source, tags=tags)
    mlops_train = [e for e in base_train if e.tag == "mlops"]
    waiting = [Example(e.title, e.description, "graphs") for e in mlops_train[:7]]
    add_labels(engine, waiting, share=0.0)
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=graphs)
    assert sets.scarce_tags == {"graphs": 7}
    assert sets.train == base_train and sets.train_label_ids == []


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_a_base_tag_relabelled_out_of_training_is_said_to_wait_as_one_left_with_one(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    shared_dataset: Path,
    tmp_path: Path,
) -> None:
    """Reviewers relabelling all but one of a base tag's training rows leave it out, and the
    retraining says so ("until it has 2"); relabelling the last one too left it out as well,
    unsaid: no `scarce_tags` entry, no warning, a candidate failed on `precision:TAG` with
    nothing to tell why. It is now said, with 0 training examples."""
    per_tag = {"mlops": MIN_PER_TAG, "computer-vision": 40, "natural-language-processing": 40}
    source = small_base_file(tmp_path / "base.csv", shared_dataset, tags=tags, per_tag=per_tag)
    settings = make_settings(base_dataset=source)
    base_train, base_eval, _ = base_split(source, tags=tags)
    mlops_train = [e for e in base_train if e.tag == "mlops"]
    assert any(e.tag == "mlops" for e in base_eval)
    add_labels(
        engine,
        [Example(e.title, e.description, "computer-vision") for e in mlops_train],
        share=0.0,
    )
    with Session(engine) as session:
        sets = training_sets.build_training_sets(session, settings=settings, tags=tags)
    assert "mlops" not in {e.tag for e in sets.train}
    assert sets.scarce_tags == {"mlops": 0} and sets.scarce_floors == {"mlops": MIN_TO_FIT}
    outcome = {"scarce_tags": sets.scarce_tags, "scarce_floors": sets.scarce_floors}
    assert training_sets.scarce_tag_warnings(outcome) == [
        "tag 'mlops' has 0 training example(s): left out of training until it has 2 "
        "(its labels are kept)"
    ]


def test_a_tag_retired_before_its_base_rows_are_left_out_of_retraining(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    seed_result: TrainResult,
) -> None:
    """The README's way out of retiring a tag in the wrong order (its line removed while
    production answers it) is a retraining. When production's base file holds rows of the tag
    (a tag of the bundled seed, or one taught with `tagflow train --data`), every retraining
    failed on the file's "tag ... is not in the approved list". The retired tag's base rows are
    now left out, as its labels are, and the frozen split of the other rows does not move."""
    retired = TagSet(tuple(t for t in tags.tags if t.name != "mlops"))
    base_train, base_eval, _ = base_split(SEED_DATASET, tags=tags)
    # Without a version that knew the tag, it is still an error in the base file.
    with Session(engine) as session, pytest.raises(DatasetError, match="'mlops' is not in"):
        training_sets.build_training_sets(session, settings=make_settings(), tags=retired)

    register_promoted(engine, make_settings(), seed_result)
    # Production then retrained without the tag (a version that answers it no longer): its
    # source is the same file, and the rows are still left out; the first version of this fix
    # asked production alone, and the retraining after the one that recovered failed again.
    register_promoted(engine, make_settings(), seed_result)
    with Session(engine) as session:
        production = registry.get_production(session)
        assert production is not None and production.version == "v0002"
        production.params = {**production.params, "classes": retired.names}
        session.add(production)
        session.commit()
    row = next(e for e in base_train if e.tag == "mlops")
    relabelled = Example(row.title, row.description, "other")
    label = add_labels(engine, [relabelled], share=0.9999)[0]
    assert label.holdout  # by hash; it trains all the same: production trained on that row
    with Session(engine) as session:
        sets = training_sets.build_training_sets(
            session, settings=make_settings(base_dataset=None), tags=retired
        )

    assert sets.train == [e for e in base_train if e.tag != "mlops"] + [relabelled]
    assert sets.evaluation == [e for e in base_eval if e.tag != "mlops"]
    assert sets.train_label_ids == [label.id] and sets.holdout_label_ids == []
    assert sets.base_rows == len(base_train) + len(base_eval)


def test_the_label_export_marks_as_held_out_what_retraining_holds_out(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    new_items: list[Example],
) -> None:
    """The export's `holdout` column follows retraining's rule, not the hash alone: a held-out
    label on a base training row trains, so the file must not offer it for evaluation."""
    base_train, base_eval, _ = base_split(SEED_DATASET, tags=tags)
    labels = add_labels(engine, [base_train[0], base_eval[0], new_items[0]], share=0.9999)
    assert all(label.holdout for label in labels)  # all three held out by hash
    with Session(engine) as session:
        held_out = training_sets.held_out_label_ids(session, settings=make_settings(), tags=tags)
        rows = labels_crud.export_rows(session, held_out=held_out, tags=tags)
        assert {row["id"]: row["holdout"] for row in rows} == {
            labels[0].id: False,  # trains: production learned this row
            labels[1].id: True,
            labels[2].id: True,
        }
        # No base dataset known (none configured, no production model): the hash alone.
        unknown = make_settings(base_dataset=None)
        assert training_sets.held_out_label_ids(session, settings=unknown, tags=tags) is None
        rows = labels_crud.export_rows(session, held_out=None, tags=tags)
        assert [row["holdout"] for row in rows] == [True, True, True]


def test_the_label_export_shows_a_retired_tags_labels_as_the_database_holds_them(
    engine: Engine,
    database_url: str,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    tmp_path: Path,
    seed_result: TrainResult,
    new_items: list[Example],
) -> None:
    """Retraining leaves a retired tag's labels out either way, and the export's `holdout`
    column, told by retraining's rule, said false for every one of them, held out in the
    database or not; it now says what the database does for them."""
    tags_file = tmp_path / "tags.csv"
    kept = [line for line in DEFAULT_TAGS_FILE.read_text().splitlines() if "mlops" not in line]
    tags_file.write_text("\n".join(kept) + "\n")
    settings = make_settings(database_url=database_url, tags_file=tags_file)
    with Session(engine) as session:  # a version that knew mlops: the base file still loads
        registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    mlops = [e for e in new_items if e.tag == "mlops"]
    other = next(e for e in new_items if e.tag != "mlops")
    labels = add_labels(engine, [mlops[0], other], share=0.9999)
    labels += add_labels(engine, [mlops[1]], share=0.0001)
    assert [label.holdout for label in labels] == [True, True, False]  # by hash
    with TestClient(create_app(settings)) as client:
        exported = client.get("/labels/export?format=jsonl", headers=auth("reviewer"))
    assert exported.status_code == 200, exported.text
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert {row["id"]: (row["tag"], row["holdout"]) for row in rows} == {
        labels[0].id: ("mlops", True),
        labels[1].id: (other.tag, True),
        labels[2].id: ("mlops", False),
    }
