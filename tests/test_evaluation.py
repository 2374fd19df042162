"""The evaluation report: per class, confusion, the automatic-acceptance figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.cli.common import metrics_table
from service.ml import registry
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder
from service.ml.evaluation import (
    choose_acceptance_cut,
    choose_threshold,
    evaluate_predictions,
    render_png,
)
from service.ml.gate import apply_gate
from service.ml.training import TrainResult, evaluate, score
from service.tags import TagSet


def _ranked(n: int, wrong: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`n` items, most confident first, right except at the ranks (from 1) in `wrong`."""
    confidence = np.linspace(0.999, 0.5, n)
    correct = np.ones(n, dtype=bool)
    correct[[rank - 1 for rank in wrong]] = False
    return confidence, correct


def test_one_confident_error_near_the_top_leaves_an_acceptance_cut() -> None:
    """300 out-of-fold items, one wrong at rank 5 (a disputed label, say). Judged from the 20th
    item on, no cut reached 0.99 and the model accepted nothing; judged from the 100th, where
    one error is within 0.99, the cut is at the 300th item, which every stricter cut from the
    100th on allows (299/300 >= 0.99)."""
    confidence, correct = _ranked(300, wrong=[5])
    assert choose_threshold(confidence, correct, target=0.99) == 1.01
    assert choose_acceptance_cut(confidence, correct, target=0.99) == confidence[299]


def test_the_acceptance_cut_stops_above_the_second_error() -> None:
    """Errors at ranks 5 and 150: 148/150 < 0.99, so the cut stops just above the second
    (ranks 100 to 149 hold one error each: 0.99 to 0.993)."""
    confidence, correct = _ranked(300, wrong=[5, 150])
    assert choose_acceptance_cut(confidence, correct, target=0.99) == confidence[148]


def test_no_acceptance_cut_without_enough_evidence_for_the_target() -> None:
    """Two errors among the first 100 are below 0.99 at every cut from there; and 99 items,
    all right, cannot show 0.99 with one error allowed: both accept nothing. A lower target
    needs fewer items (20 at 0.95)."""
    confidence, correct = _ranked(300, wrong=[5, 60])
    assert choose_acceptance_cut(confidence, correct, target=0.99) == 1.01
    confidence, correct = _ranked(99, wrong=[])
    assert choose_acceptance_cut(confidence, correct, target=0.99) == 1.01
    assert choose_acceptance_cut(confidence, correct, target=0.95) == confidence[98]


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
        "precision": None,  # never answered: not measured (sklearn's 0.0 read "always wrong")
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
    the picture still renders. A tag the model answered wrongly keeps its precision of 0 (and,
    carried by no item, has no recall)."""
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
    assert report["per_class"]["wrong"] == {
        "precision": 0.0,
        "recall": None,
        "f1": 0.0,
        "support": 0,
    }
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


def test_a_tag_the_model_never_answers_has_no_precision_everywhere_it_shows(
    seed_result: TrainResult,
    encoder: Encoder,
    tags: TagSet,
    shared_dataset: Path,
    sqlite_engine: Engine,
    tmp_path: Path,
) -> None:
    """The seed model on shared items it never answers "other" for, three of which carry it:
    their precision was sklearn's 0.0, read as "always wrong" (and a `precision<=0.5` filter
    listed the version as imprecise at "other") when the model never said it. It is null, "-"
    in the table and no bar in the picture; a criterion on it leaves the version out without
    calling the metric unknown; the gate neither crashes nor lets a candidate drop the tag."""
    model = seed_result.model
    items, _ = load_dataset(shared_dataset, tags=tags)
    answers = model.proba_to_tags(score(model, encoder, items[:300]))
    never_other = [e for e, tag in zip(items[:300], answers, strict=True) if tag != "other"]
    report = evaluate(model, encoder, never_other)
    other = report["per_class"]["other"]
    assert other["support"] > 0 and other["precision"] is None
    assert other["recall"] == 0.0 and other["f1"] == 0.0  # its items all missed: measured
    assert all(
        report["per_class"][t]["precision"] is not None for t in model.classes if t != "other"
    )
    json.dumps(report, allow_nan=False)

    console = Console(record=True, width=100)
    console.print(metrics_table(report, "never other"))
    row = next(line for line in console.export_text().splitlines() if line.startswith("│ other "))
    assert row.split("│")[2].strip() == "-" and row.split("│")[3].strip() == "0.000"

    with Session(sqlite_engine) as session:
        version = registry.register(
            session,
            result=dataclasses.replace(seed_result, metrics=report),
            artifacts_dir=tmp_path / "models",
        ).version
        imprecise = registry.Criterion.parse("per_class.other.precision<=0.5")
        precise = registry.Criterion.parse("per_class.other.precision>=0.5")
        assert registry.list_versions(session, criteria=[imprecise]) == []  # not an error
        assert registry.list_versions(session, criteria=[precise]) == []
        recall = registry.Criterion.parse("per_class.other.recall<=0.5")
        assert [r.version for r in registry.list_versions(session, criteria=[recall])] == [version]
    assert (tmp_path / "models" / version / registry.REPORT_PNG).stat().st_size > 0

    same = apply_gate(report, report, target_precision=0.5)
    check = next(c for c in same["checks"] if c["name"] == "precision:other")
    assert check["passed"] and check["production"] is None and "skipped" in check["note"]
    # The same model's scores on all 300 items, as production, and with "other" masked, as a
    # candidate that never says it: a null precision is no pass for the candidate, and as
    # production's figure it holds the candidate's answers with the tag to a floor.
    proba = score(model, encoder, items[:300])
    masked = proba.copy()
    masked[:, model.classes.index("other")] = 0.0
    says, never = (
        evaluate_predictions(items[:300], p, model.classes, threshold=model.threshold)
        for p in (proba, masked)
    )
    assert (
        says["per_class"]["other"]["precision"] > 0.5
        and never["per_class"]["other"]["precision"] is None
    )
    dropped = next(
        c
        for c in apply_gate(never, says, target_precision=0.5)["checks"]
        if c["name"] == "precision:other"
    )
    assert not dropped["passed"] and dropped["candidate"] is None
    assert "never answers it" in dropped["note"]
    back = next(
        c
        for c in apply_gate(says, never, target_precision=0.5)["checks"]
        if c["name"] == "precision:other"
    )
    assert (
        back["limit"] is not None and back["candidate"] == says["per_class"]["other"]["precision"]
    )
    assert "production never answers it" in back["note"]


def test_the_picture_tells_a_zero_from_a_figure_not_measured() -> None:
    """In the per-class panel a bar of 0 and a missing figure both drew nothing, so "other"
    (never answered: precision not measured, recall and F1 0) showed as an empty slot. Each
    is now marked ("-", "0"), each tag shows its support, and the auto point names its cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.ml.evaluation import _coverage_panel, _per_class_panel

    examples = [Example("Docker", "", "mlops"), Example("GANs", "", "computer-vision")]
    examples += [Example("Speech", "", "other")]
    proba = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    report = evaluate_predictions(examples, proba, ["computer-vision", "mlops"], threshold=0.75)
    fig, (bars, curve) = plt.subplots(1, 2)
    try:
        _per_class_panel(bars, report)
        _coverage_panel(curve, report)
        marks = sorted((round(t.get_position()[0], 2), t.get_text()) for t in bars.texts)
        ticks = [t.get_text() for t in bars.get_xticklabels()]
        legend = curve.get_legend().get_texts()[0].get_text()
    finally:
        plt.close(fig)
    assert marks == [(1.73, "-"), (2.0, "0"), (2.27, "0")]  # other: precision, recall, f1
    assert ticks[2] == "other\n(n=1)"
    assert legend.startswith("auto (cut 0.750): 67% accepted")
