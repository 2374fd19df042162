"""Training decisions: the fast-path cut, and the report of a trained model."""

from __future__ import annotations

import dataclasses

import numpy as np

from service.config import SEED_DATASET
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, choose_fast_threshold, seen_in_training
from service.tags import TagSet

AB = np.array(["a", "b"])


def _proba(tags: list[int], conf: list[float], n_classes: int = 2) -> np.ndarray:
    p = np.full((len(tags), n_classes), 0.0)
    for row, (t, c) in enumerate(zip(tags, conf, strict=True)):
        p[row] = (1 - c) / (n_classes - 1)
        p[row, t] = c
    return p


def test_fast_cut_stops_above_the_first_disagreement() -> None:
    """40 items: the fast head is right and agrees with the full model down to confidence 0.7;
    at 0.65 it disagrees with the full model (which is right), so the cut must stay above."""
    conf = list(np.linspace(0.99, 0.7, 39)) + [0.65]
    y = np.array(["a"] * 40)
    p_fast = _proba([0] * 39 + [1], conf)
    p_full = _proba([0] * 40, [0.9] * 40)
    cut = choose_fast_threshold(p_fast, p_full, y, classes=AB, target=0.99, agreement=0.995)
    assert cut == conf[38]


def test_fast_cut_needs_precision_as_well_as_agreement() -> None:
    """Both heads agree everywhere, but are wrong on the least confident fifth."""
    conf = list(np.linspace(0.99, 0.6, 50))
    y = np.array(["a"] * 40 + ["b"] * 10)
    p = _proba([0] * 50, conf)
    cut = choose_fast_threshold(p, p, y, classes=AB, target=0.99, agreement=0.995)
    assert cut == conf[39]


def test_fast_cut_is_never_when_too_few_items_qualify() -> None:
    y = np.array(["a", "b"] * 20)
    p_fast = _proba([1, 0] * 20, [0.9] * 40)  # always wrong
    assert choose_fast_threshold(p_fast, p_fast, y, classes=AB, target=0.99, agreement=0.995) > 1.0


def test_report_describes_the_fast_path_as_served(shared_result: TrainResult) -> None:
    fast = shared_result.metrics["fast_path"]
    assert fast["threshold"] == shared_result.model.fast_threshold
    assert fast["answered"] == round(fast["share"] * shared_result.metrics["n"])
    assert fast["precision"] >= 0.95
    assert shared_result.params["fast_threshold"] == shared_result.model.fast_threshold


def test_a_model_knows_which_items_it_was_trained_on(
    seed_result: TrainResult, tags: TagSet
) -> None:
    """Lineage kept in the model itself (and so under its checksum): an evaluation can say
    which of its items the model saw."""
    train_set, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    model = seed_result.model
    assert seen_in_training(model, train_set) == len(train_set) == seed_result.data_rows
    assert seen_in_training(model, eval_set) == 0
    older = dataclasses.replace(model, trained_on=frozenset())  # trained before it was kept
    assert seen_in_training(older, train_set) is None
