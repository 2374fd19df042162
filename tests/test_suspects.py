"""Suspect labels: training rows whose label the out-of-fold model confidently denies."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from service.config import SEED_DATASET, Settings
from service.entities import OutboxItem
from service.ml import registry
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder
from service.ml.pipeline import train_file
from service.ml.suspects import find_suspects
from service.ml.training import TrainResult, fit
from service.tags import TagSet
from tests.test_retraining import refuse_inserts

CLASSES = ["computer-vision", "mlops", "natural-language-processing", "other"]


def example(title: str, tag: str) -> Example:
    return Example(title=title, description="", tag=tag)


def test_rows_whose_label_gets_little_probability_are_listed_least_likely_first() -> None:
    rows = [
        example("denied hard", "mlops"),  # p(label) 0.02
        example("agreed", "computer-vision"),
        example("denied softly", "other"),  # p(label) 0.08
        example("doubted, not denied", "mlops"),  # p(label) 0.3: not a suspect
        example("low but on top", "other"),  # its label is the top tag: not a suspect
    ]
    proba = np.array(
        [
            [0.95, 0.02, 0.02, 0.01],
            [0.97, 0.01, 0.01, 0.01],
            [0.10, 0.02, 0.80, 0.08],
            [0.60, 0.30, 0.05, 0.05],
            [0.09, 0.09, 0.09, 0.73],
        ]
    )
    report = find_suspects(rows, proba, classes=CLASSES, max_p_label=0.1)
    assert report.count == 2 and report.share == 0.4
    assert [s.title for s in report.items] == ["denied hard", "denied softly"]
    first = report.items[0]
    assert (first.tag, first.predicted, first.confidence, first.p_label) == (
        "mlops",
        "computer-vision",
        0.95,
        0.02,
    )
    assert find_suspects(rows, proba, classes=CLASSES, limit=1).count == 2  # count covers all
    assert len(find_suspects(rows, proba, classes=CLASSES, limit=1).items) == 1


def test_planted_label_errors_are_found(encoder: Encoder, tags: TagSet) -> None:
    """Ten seed rows relabelled at random: training lists most of them and little else.
    Measured over five plantings: 7-9 of 10 found, no clean row listed."""
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    rng = random.Random(1)
    planted_at = rng.sample(range(len(seed)), 10)
    planted = list(seed)
    for i in planted_at:
        wrong = rng.choice([c for c in CLASSES if c != seed[i].tag])
        planted[i] = replace(seed[i], tag=wrong)
    _, cv = fit(planted, encoder=encoder, target_precision=0.99)
    listed = {item["text_hash"] for item in cv["suspect_labels"]["items"]}
    flipped = {planted[i].text_hash for i in planted_at}
    assert len(listed & flipped) >= 7, cv["suspect_labels"]
    assert len(listed - flipped) <= 1, cv["suspect_labels"]


def test_train_lists_the_labels_to_check(shared_result: TrainResult) -> None:
    """The shared data's own doubtful rows reach the report (and so report.json)."""
    report = shared_result.cv["suspect_labels"]
    assert report["count"] == len(report["items"]) >= 3
    assert all(i["predicted"] != i["tag"] and i["p_label"] <= 0.1 for i in report["items"])
    assert "Forex Prediction" in {i["title"] for i in report["items"]}


def planted_seed(tmp_path: Path, tags: TagSet, flips: int = 10) -> tuple[Path, set[str]]:
    """The bundled seed as a CSV with `flips` labels changed at random; the changed hashes."""
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    rng = random.Random(1)
    rows = list(seed)
    for i in rng.sample(range(len(rows)), flips):
        rows[i] = replace(rows[i], tag=rng.choice([c for c in CLASSES if c != rows[i].tag]))
    flipped = {r.text_hash for r, s in zip(rows, seed, strict=True) if r.tag != s.tag}
    path = tmp_path / "planted.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "description", "tag"])
        writer.writerows([r.title, r.description, r.tag] for r in rows)
    return path, flipped


@pytest.mark.parametrize("send", [True, False])
def test_training_sends_doubted_labels_to_review(
    send: bool,
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    make_settings: Callable[..., Settings],
    encoder: Encoder,
    tags: TagSet,
) -> None:
    path, flipped = planted_seed(tmp_path, tags)
    settings = make_settings(database_url=database_url, review_suspects=send)
    with Session(engine) as session:
        outcome = train_file(session, path=path, settings=settings, tags=tags, encoder=encoder)
        outbox = session.exec(select(OutboxItem)).all()
        version = outcome.version.version
    listed = outcome.result.cv["suspect_labels"]["items"]
    sent = [o.payload for o in outbox if o.payload["reason"] == "label_check"]
    if not send:
        assert sent == []
        return
    assert len(sent) == len(listed) >= 1
    assert {p["text_hash"] for p in sent} == {i["text_hash"] for i in listed}
    # Only the rows of the training split can be judged out of fold; those sent are planted.
    assert len({p["text_hash"] for p in sent} - flipped) <= 1
    assert all(p["model_version"] == version for p in sent)
    with Session(engine) as session:  # the version records how many went with it
        assert registry.get_version(session, version=version).params["label_checks"] == len(sent)


def test_training_whose_label_checks_fail_registers_no_version(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    make_settings: Callable[..., Settings],
    encoder: Encoder,
    tags: TagSet,
) -> None:
    """`tagflow train` registered its version, then sent its label checks in a second commit:
    when that one failed, the version stayed without them, and nothing sent them later. They
    are now committed with the version: a database that refuses them registers neither."""
    path, _ = planted_seed(tmp_path, tags)
    settings = make_settings(database_url=database_url, review_suspects=True)
    refuse_inserts(engine, table="outboxitem")
    with Session(engine) as session, pytest.raises(DBAPIError, match="outboxitem refused"):
        train_file(session, path=path, settings=settings, tags=tags, encoder=encoder)
    with Session(engine) as session:
        assert registry.list_versions(session) == []
        assert session.exec(select(OutboxItem)).all() == []
    assert not settings.artifacts_dir.exists() or list(settings.artifacts_dir.iterdir()) == []
