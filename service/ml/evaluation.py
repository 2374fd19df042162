"""Evaluation: overall, per-class and per-slice metrics, confusion matrix, precision-coverage.

Every model version carries the report this module builds, as JSON and as a PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from service.ml.dataset import Example

_NLP_TERMS = re.compile(r"\b(transformers?|llms?|large language models?|bert\w*|gpt\w*)\b", re.I)

# A slice is a named predicate over examples; the gate compares slice F1 between versions.
SLICES: dict[str, Callable[[Example], bool]] = {
    "short_text": lambda e: len(e.text.split()) < 8,
    "nlp_transformer_terms": lambda e: (
        e.tag == "natural-language-processing" and bool(_NLP_TERMS.search(e.text))
    ),
    "mentions_transformer_terms": lambda e: bool(_NLP_TERMS.search(e.text)),
}


def min_evidence(target: float) -> int:
    """The fewest accepted items whose precision can reach `target` with one of them wrong:
    100 for 0.99. Judged on fewer, a single error anywhere among them reads as a miss."""
    return math.ceil(1 / (1 - target) - 1e-9) if target < 1 else 1


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, *, target: float, min_support: int = 20
) -> float:
    """Lowest confidence cut whose accepted set, and every stricter one, has precision >= target.

    Requiring every stricter cut to qualify too avoids a lucky dip; `min_support` keeps a cut
    that accepts only a handful of items from counting as evidence. Returns 1.01 (accept
    nothing) when no cut qualifies.
    """
    order = np.argsort(-confidence)
    conf, ok = confidence[order], correct[order].astype(float)
    precision = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    best = 1.01
    for k in range(len(conf) - 1, -1, -1):
        if k + 1 < min_support:
            break
        # Only cut between distinct confidences, so the set accepted by `>= cut` is exactly 0..k.
        if k + 1 < len(conf) and conf[k + 1] == conf[k]:
            continue
        if np.all(precision[min_support - 1 : k + 1] >= target):
            best = float(conf[k])
            break
    return best


def choose_acceptance_cut(confidence: np.ndarray, correct: np.ndarray, *, target: float) -> float:
    """The cut for automatic acceptance: `choose_threshold` judged from `min_evidence(target)`
    items on (100 at 0.99), not from the 20th. From the 20th, one confident wrong label among
    the first 20 (a disputed label, a typo in a tag) left no cut at 0.99 at all: a retrained
    candidate then accepted nothing and the gate refused it. Two wrong among the first 100
    still leave none, and so do fewer than 100 items: they cannot show 0.99."""
    return choose_threshold(
        confidence, correct, target=target, min_support=acceptance_support(target)
    )


def acceptance_support(target: float) -> int:
    """The fewest out-of-fold answers `choose_acceptance_cut` judges a cut on: where one error
    is within `target`, and never fewer than 20 (20 at 0.95 and below, 100 at 0.99)."""
    return max(20, min_evidence(target))


def precision_coverage(confidence: np.ndarray, correct: np.ndarray, points: int = 21) -> list[dict]:
    """Precision of the accepted items at evenly spaced coverages (most confident first)."""
    order = np.argsort(-confidence)
    ok = correct[order].astype(float)
    curve = []
    for cov in np.linspace(0.05, 1.0, points - 1):
        k = max(1, round(cov * len(ok)))
        curve.append(
            {
                "coverage": round(float(cov), 3),
                "threshold": float(confidence[order][k - 1]),
                "precision": float(ok[:k].mean()),
            }
        )
    return curve


def _per_class(y_true: Sequence[str], y_pred: Sequence[str], classes: list[str]) -> dict:
    """Precision, recall, F1 and support of each class. A ratio over nothing is None ("-" in
    the tables), not sklearn's zero_division 0.0: the precision of a tag the model never
    answered (0.0 read as "always wrong" when it was never said) and the recall of a tag no
    item carries. F1, 2TP / (2TP + FP + FN), is measured once either happened (0.0 for a tag
    whose items the model never gives it), and None only when neither did."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    answered = set(y_pred)
    report = {}
    for i, c in enumerate(classes):
        support = int(s[i])
        report[c] = {
            "precision": float(p[i]) if c in answered else None,
            "recall": float(r[i]) if support else None,
            "f1": float(f[i]) if support or c in answered else None,
            "support": support,
        }
    return report


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    _, _, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average="weighted", zero_division=0
    )
    return float(f)


def evaluate_predictions(
    examples: Sequence[Example],
    proba: np.ndarray,
    classes: list[str],
    *,
    threshold: float,
) -> dict[str, Any]:
    """The full report for one model on one evaluation set."""
    y_true = [e.tag for e in examples]
    y_pred = [classes[i] for i in proba.argmax(axis=1)]
    conf = proba.max(axis=1)
    correct = np.array([a == b for a, b in zip(y_true, y_pred, strict=True)])
    accepted = conf >= threshold
    # A tag the model cannot answer (absent from its training data) still has its row and
    # column, with recall 0: left out, its items vanished from the table and the matrix.
    labels = classes + sorted(set(y_true) - set(classes))
    slices = {}
    for name, member in SLICES.items():
        idx = [i for i, e in enumerate(examples) if member(e)]
        slices[name] = {
            "n": len(idx),
            "f1": weighted_f1([y_true[i] for i in idx], [y_pred[i] for i in idx]) if idx else None,
            "accuracy": float(correct[idx].mean()) if idx else None,
        }
    return {
        "n": len(examples),
        "classes": list(classes),  # the tags the model can answer
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": weighted_f1(y_true, y_pred),
        "per_class": _per_class(y_true, y_pred, labels),
        "slices": slices,
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
        "auto": {
            "threshold": threshold,
            "coverage": float(accepted.mean()),
            "precision": float(correct[accepted].mean()) if accepted.any() else None,
            "accepted": int(accepted.sum()),
        },
        "precision_coverage": precision_coverage(conf, correct),
    }


def render_png(report: dict[str, Any], path: Path, *, title: str) -> None:
    """One picture of a version's evaluation: confusion matrix, per-class bars, the
    precision-coverage curve with the auto-acceptance point, and F1 by slice and baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10.5))
    _confusion_panel(axes[0][0], report)
    _per_class_panel(axes[0][1], report)
    _coverage_panel(axes[1][0], report)
    _slices_panel(axes[1][1], report)
    fig.suptitle(f"{title}: {report['n']} held-out items")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _confusion_panel(ax: Any, report: dict[str, Any]) -> None:
    labels = report["confusion"]["labels"]
    matrix = np.array(report["confusion"]["matrix"])
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        color = "black" if v < matrix.max() / 2 else "white"
        ax.text(j, i, str(v), ha="center", va="center", color=color)
    ax.set_title("confusion matrix")


def _per_class_panel(ax: Any, report: dict[str, Any]) -> None:
    labels = report["confusion"]["labels"]
    x = np.arange(len(labels))
    for k, metric in enumerate(("precision", "recall", "f1")):
        values = [report["per_class"][c][metric] for c in labels]
        offset = (k - 1) * 0.27
        ax.bar(x + offset, [_or_nan(v) for v in values], 0.27, label=metric)
        # A bar of 0 and a figure nothing measured both draw nothing: say which it is.
        for xi, value in zip(x, values, strict=True):
            if value is None or value == 0:
                mark = "-" if value is None else "0"
                ax.text(xi + offset, 0.01, mark, ha="center", va="bottom", fontsize=8)
    # Support under each tag: a precision of 0.4 on 8 items is not one on 800.
    names = [f"{c}\n(n={report['per_class'][c]['support']})" for c in labels]
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    ax.set_title(f"per class (weighted F1 {report['weighted_f1']:.3f}; -: not measured)")


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def _coverage_panel(ax: Any, report: dict[str, Any]) -> None:
    curve = report["precision_coverage"]
    ax.plot([p["coverage"] for p in curve], [p["precision"] for p in curve], marker="o")
    auto = report["auto"]
    if auto["precision"] is not None:
        ax.scatter(
            [auto["coverage"]],
            [auto["precision"]],
            color="red",
            zorder=3,
            label=(
                f"auto (cut {auto['threshold']:.3f}): {auto['coverage']:.0%} accepted "
                f"at precision {auto['precision']:.3f}"
            ),
        )
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("coverage (share accepted, most confident first)")
    ax.set_ylabel("precision of accepted")
    ax.set_ylim(min(0.8, min(p["precision"] for p in curve)), 1.005)
    ax.grid(alpha=0.3)
    ax.set_title("precision vs coverage")


def _slices_panel(ax: Any, report: dict[str, Any]) -> None:
    """Weighted F1 of the model on every item and on each slice, then each baseline's."""
    rows = [(f"model, all items (n={report['n']})", report["weighted_f1"], "tab:blue")]
    rows += [
        (f"model, {name.replace('_', ' ')} (n={s['n']})", s["f1"], "tab:cyan")
        for name, s in report.get("slices", {}).items()
        if s["n"]
    ]
    rows += [
        (f"baseline: {name.replace('_', ' ')}", b["weighted_f1"], "tab:gray")
        for name, b in report.get("baselines", {}).items()
    ]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r[1] for r in rows], color=[r[2] for r in rows])
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    for yi, (_, value, _) in zip(y, rows, strict=True):
        ax.text(min(value, 1.0) + 0.01, yi, f"{value:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("weighted F1")
    ax.set_title("slices and baselines (same held-out items)")
