"""Suspect labels: training rows whose label the out-of-fold model confidently denies."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from service.config import SEED_DATASET
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder
from service.ml.suspects import find_suspects
from service.ml.training import TrainResult, fit
from service.tags import TagSet

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
