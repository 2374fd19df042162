"""Two model versions on the same labelled items: which is better, where, and how sure.

Each version is scored as it serves (fast path included, at its served cut). The report has
both evaluations, the quality gate's checks of the first against the second, and the paired
counts: on how many items exactly one of them is right, with McNemar's exact test on those
items (a small p-value means the difference in accuracy is unlikely to be the luck of the
sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from service.entities import ModelVersion
from service.ml import registry
from service.ml.classifier import TagModel, precomputed
from service.ml.dataset import Example
from service.ml.encoder import Encoder
from service.ml.evaluation import evaluate_predictions
from service.ml.gate import apply_gate
from service.ml.training import seen_in_training


@dataclass(frozen=True)
class Contender:
    """A version to compare: its name, fitted model and served cut."""

    version: str
    model: TagModel
    threshold: float

    @classmethod
    def registered(cls, row: ModelVersion, *, artifacts_dir: Path) -> Contender:
        """A registered version, loaded (checksum verified), at the cut it is served with."""
        model = registry.load_model(row, artifacts_dir=artifacts_dir)
        return cls(row.version, model, registry.serving_threshold(row))


def paired_counts(truth: Sequence[str], a: Sequence[str], b: Sequence[str]) -> dict[str, Any]:
    """Per-item agreement of two taggings against the truth, and McNemar's exact p-value."""
    y, ta, tb = np.asarray(truth), np.asarray(a), np.asarray(b)
    a_right, b_right = ta == y, tb == y
    a_only = int((a_right & ~b_right).sum())
    b_only = int((b_right & ~a_right).sum())
    discordant = a_only + b_only
    return {
        "items": len(y),
        "same_tag": int((ta == tb).sum()),
        "both_right": int((a_right & b_right).sum()),
        "only_a_right": a_only,
        "only_b_right": b_only,
        "both_wrong": int((~a_right & ~b_right).sum()),
        # Exact McNemar: under "equally accurate", each discordant item is a fair coin.
        "mcnemar_p": float(binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0,
    }


def compare_versions(
    a: Contender,
    b: Contender,
    *,
    encoder: Encoder,
    examples: Sequence[Example],
    target_precision: float,
) -> dict[str, Any]:
    """`a` against `b` on `examples`: both reports, the gate (a as candidate), paired counts.

    Each side also says how many of the items its version was trained on (`seen_in_training`,
    None for a version that does not record it): a version scored on items it learned looks
    better than it is, and the comparison tilts its way."""
    texts = [e.text for e in examples]
    embeddings = precomputed(texts, encoder.encode(texts))  # encoded once, for both
    reports, tags = {}, {}
    for side, contender in (("a", a), ("b", b)):
        proba = contender.model.predict_proba(texts, embeddings)
        tags[side] = contender.model.proba_to_tags(proba)
        reports[side] = evaluate_predictions(
            examples, proba, contender.model.classes, threshold=contender.threshold
        )
    seen = {side: seen_in_training(c.model, examples) for side, c in (("a", a), ("b", b))}
    return {
        "a": {"version": a.version, "seen_in_training": seen["a"], **reports["a"]},
        "b": {"version": b.version, "seen_in_training": seen["b"], **reports["b"]},
        "paired": paired_counts([e.tag for e in examples], tags["a"], tags["b"]),
        "gate": apply_gate(reports["a"], reports["b"], target_precision=target_precision),
    }
