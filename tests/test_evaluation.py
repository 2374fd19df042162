"""The evaluation report: per class, confusion, the automatic-acceptance figures."""

from __future__ import annotations

import numpy as np

from service.ml.dataset import Example
from service.ml.evaluation import evaluate_predictions


def test_a_tag_the_model_cannot_answer_keeps_its_row_and_column() -> None:
    """A model trained without "other" scores every item; the "other" items used to vanish
    from the per-class table and the confusion matrix (which then summed to fewer items than
    the report's n)."""
    examples = [
        Example("Docker for models", "Serving.", "mlops"),
        Example("Image GANs", "Faces.", "computer-vision"),
        Example("Speech to text", "ASR.", "other"),
    ]
    classes = ["computer-vision", "mlops"]
    proba = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    report = evaluate_predictions(examples, proba, classes, threshold=0.75)
    assert report["per_class"]["other"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
    assert report["confusion"]["labels"] == ["computer-vision", "mlops", "other"]
    matrix = np.array(report["confusion"]["matrix"])
    assert matrix.sum() == report["n"] == 3 and matrix[2].tolist() == [0, 1, 0]
    assert report["auto"]["accepted"] == 2 and report["auto"]["precision"] == 1.0
