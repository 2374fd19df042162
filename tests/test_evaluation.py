"""The evaluation report: per class, confusion, the automatic-acceptance figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.ml import registry
from service.ml.dataset import Example
from service.ml.evaluation import evaluate_predictions, render_png
from service.ml.gate import apply_gate


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


def test_a_tag_with_no_items_and_no_answers_has_no_figures(tmp_path: Path) -> None:
    """A tag no evaluation item carries and the model never answered had precision, recall and
    F1 of 0.0, read as a model that fails the tag; nothing was measured, so they are null (the
    tables show "-"), a criterion on them leaves the version out, the gate skips the tag, and
    the picture still renders. A tag the model answered wrongly keeps its precision of 0."""
    examples = [Example(f"item {i}", "", tag) for i, tag in enumerate("aabb")]
    classes = ["a", "b", "quiet", "wrong"]
    proba = np.array(
        [[0.9, 0, 0, 0.1], [0.1, 0, 0, 0.9], [0, 0.9, 0, 0.1], [0, 0.8, 0.1, 0.1]], dtype=float
    )
    report = evaluate_predictions(examples, proba, classes, threshold=0.5)
    assert report["per_class"]["quiet"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "support": 0,
    }
    assert report["per_class"]["wrong"]["precision"] == 0.0
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    json.dumps(report, allow_nan=False)
    assert not registry.Criterion.parse("per_class.quiet.precision>=0").holds(report)
    assert registry.Criterion.parse("per_class.wrong.precision>=0").holds(report)
    gate = apply_gate(report, report, target_precision=0.5)
    quiet = next(c for c in gate["checks"] if c["name"] == "precision:quiet")
    assert quiet["passed"] and "skipped" in quiet["note"]
    assert "precision:quiet" not in gate["failed"]
    render_png(report, tmp_path / "report.png", title="quiet")
    assert (tmp_path / "report.png").stat().st_size > 0
