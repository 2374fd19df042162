"""Model quality on the shared dataset, measured the way training selects: cross-validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from service.ml.dataset import load_dataset
from service.ml.encoder import Encoder
from service.ml.evaluation import weighted_f1
from service.ml.training import TrainConfig, TrainResult, fit
from service.tags import TagSet


@pytest.mark.slow
def test_cross_validated_weighted_f1(shared_dataset: Path, tags: TagSet, encoder: Encoder) -> None:
    """5-fold CV of the whole training procedure (model selection included, so nested) on the
    764 items. Measured here: 0.929 (int8 encoder). The issue's goal is 0.93; the floor below
    guards against regressions, the figure is reported in the README and the closing note.
    """
    examples, _ = load_dataset(shared_dataset, tags=tags)
    y = np.array([e.tag for e in examples])
    folds = StratifiedKFold(5, shuffle=True, random_state=42)
    predicted = np.empty(len(examples), dtype=object)
    config = TrainConfig()
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y):
        model, _ = fit(
            [examples[i] for i in train_idx], encoder=encoder, target_precision=0.99, config=config
        )
        texts = [examples[i].text for i in test_idx]
        proba = model.predict_proba(texts, encoder.encode)
        predicted[test_idx] = model.proba_to_tags(proba)
    score = weighted_f1(list(y), list(predicted))
    print(f"cross-validated weighted F1: {score:.4f}")
    assert score >= 0.925


def test_held_out_report_and_auto_precision(shared_result: TrainResult) -> None:
    """The shared-data model's held-out report is complete and its auto path is precise."""
    metrics = shared_result.metrics
    assert metrics["n"] == 153
    assert metrics["weighted_f1"] >= 0.90
    assert metrics["weighted_f1"] > metrics["baselines"]["keyword_rules"]["weighted_f1"]
    assert metrics["auto"]["coverage"] >= 0.6
    assert metrics["auto"]["precision"] >= 0.95
    assert set(metrics["slices"]) >= {"short_text", "nlp_transformer_terms"}
    assert sum(map(sum, metrics["confusion"]["matrix"])) == 153
