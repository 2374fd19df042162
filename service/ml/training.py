"""Training: model selection by cross-validation, threshold choice, held-out evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

from service.ml.baseline import rules_predict
from service.ml.classifier import TagModel, precomputed
from service.ml.dataset import DatasetError, Example, check_leakage, examples_hash
from service.ml.encoder import Encoder
from service.ml.evaluation import (
    choose_acceptance_cut,
    choose_threshold,
    evaluate_predictions,
    weighted_f1,
)
from service.ml.features import embedding_classifier, tfidf_classifier
from service.ml.runtime import RUNTIME, current_runtime
from service.ml.suspects import find_suspects

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """The search space and split; defaults are what cross-validation settled on here.

    The grid is kept narrow on purpose: with ~600 items, a wider one (C up to 10, weights 0 and
    1) let cross-validation noise pick extremes, and nested CV fell from 0.929 to 0.920.
    """

    embedding_cs: tuple[float, ...] = (1.0, 4.0)
    tfidf_c: float = 30.0
    weights: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)
    folds: int = 5
    seed: int = 0
    eval_share: float = 0.2
    # Share of fast-path answers that must match the full model's tag (out of fold).
    fast_agreement: float = 0.995


DEFAULT_CONFIG = TrainConfig()
# Why training refuses texts with no word in them (`train`).
NO_WORDS = (
    "the TF-IDF head finds no word in the training texts (a word is two letters or digits or "
    "more): titles and descriptions of emoji or single characters alone cannot be learned"
)


@dataclass
class TrainResult:
    """A fitted model with everything the registry records about it."""

    model: TagModel
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_hash: str
    data_rows: int
    seconds: float
    cv: dict[str, Any] = field(default_factory=dict)


def split_examples(
    examples: list[Example], *, share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Stratified train / evaluation split."""
    tags = [e.tag for e in examples]
    train, evaluation = train_test_split(
        examples, test_size=share, random_state=seed, stratify=tags
    )
    return list(train), list(evaluation)


def _oof_proba(estimator: Any, features: Any, y: np.ndarray, folds: StratifiedKFold) -> np.ndarray:
    """Out-of-fold class probabilities (classes in sorted order, as sklearn orders them)."""
    proba = np.zeros((len(y), len(np.unique(y))))
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y):
        fitted = clone(estimator).fit(features[train_idx], y[train_idx])
        proba[test_idx] = fitted.predict_proba(features[test_idx])
    return proba


def select_model(
    texts: list[str], embeddings: np.ndarray, y: np.ndarray, config: TrainConfig
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Pick the embedding C and mixing weight by cross-validated weighted F1.

    Returns the chosen parameters with the CV table, the chosen configuration's out-of-fold
    probabilities and the TF-IDF head's alone (used to choose the two cuts).
    """
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    classes = np.unique(y)
    p_tfidf = _oof_proba(tfidf_classifier(config.tfidf_c), np.array(texts, dtype=object), y, folds)
    table: list[dict[str, float]] = []
    best: tuple[float, dict[str, float], np.ndarray] | None = None
    for c in config.embedding_cs:
        p_emb = _oof_proba(embedding_classifier(c), embeddings, y, folds)
        for w in config.weights:
            proba = w * p_emb + (1 - w) * p_tfidf
            f1 = weighted_f1(list(y), list(classes[proba.argmax(axis=1)]))
            row = {"embedding_c": c, "weight": w, "cv_weighted_f1": round(f1, 4)}
            table.append(row)
            if best is None or f1 > best[0] + 1e-9:
                best = (f1, row, proba)
    assert best is not None
    chosen = {
        "embedding_c": best[1]["embedding_c"],
        "tfidf_c": config.tfidf_c,
        "weight": best[1]["weight"],
        "cv_weighted_f1": best[0],
    }
    return {"chosen": chosen, "table": table}, best[2], p_tfidf


def choose_fast_threshold(
    p_fast: np.ndarray,
    p_full: np.ndarray,
    y: np.ndarray,
    *,
    classes: np.ndarray,
    target: float,
    agreement: float,
) -> float:
    """Lowest TF-IDF confidence at which the fast path may answer alone.

    On out-of-fold predictions, the items at or above the cut (and above every stricter cut)
    must be tagged as the full model tags them at least `agreement` of the time, and
    correctly at least `target` of the time. Both arrays' columns are `classes`.
    """
    conf = p_fast.max(axis=1)
    fast_tags = classes[p_fast.argmax(axis=1)]
    agrees = choose_threshold(conf, fast_tags == classes[p_full.argmax(axis=1)], target=agreement)
    precise = choose_threshold(conf, fast_tags == y, target=target)
    return max(agrees, precise)


def fit(
    train: list[Example],
    *,
    encoder: Encoder,
    target_precision: float,
    config: TrainConfig = DEFAULT_CONFIG,
    progress: Progress = lambda _step: None,
) -> tuple[TagModel, dict[str, Any]]:
    """Select, choose the threshold on out-of-fold predictions, and fit on all of `train`."""
    texts = [e.text for e in train]
    y = np.array([e.tag for e in train])
    if len(set(y)) < 2:
        raise DatasetError("training needs at least two different tags")
    progress("encode")
    embeddings = encoder.encode(texts)
    progress("select")
    cv, oof, oof_tfidf = select_model(texts, embeddings, y, config)
    classes = sorted(str(t) for t in set(y))
    fast = choose_fast_threshold(
        oof_tfidf,
        oof,
        y,
        classes=np.array(classes),
        target=target_precision,
        agreement=config.fast_agreement,
    )
    skipped = oof_tfidf.max(axis=1) >= fast
    # The acceptance cut is chosen on what will be served: the fast path's answers included.
    served = np.where(skipped[:, None], oof_tfidf, oof)
    conf = served.max(axis=1)
    correct = np.array(classes)[served.argmax(axis=1)] == y
    threshold = choose_acceptance_cut(conf, correct, target=target_precision)
    progress("fit")
    chosen = cv["chosen"]
    model = TagModel(
        classes=classes,
        embedding_head=embedding_classifier(chosen["embedding_c"]).fit(embeddings, y),
        tfidf_head=tfidf_classifier(chosen["tfidf_c"]).fit(texts, y),
        weight=chosen["weight"],
        threshold=threshold,
        encoder=encoder.path.name,
        fast_threshold=fast,
    )
    # Rows the model, not having seen them, puts elsewhere with confidence: for a person to read.
    cv["suspect_labels"] = find_suspects(train, served, classes=classes).model_dump()
    cv["oof_auto_coverage"] = float((conf >= threshold).mean())
    cv["oof_fast_share"] = float(skipped.mean())
    cv["chosen"]["fast_threshold"] = fast
    return model, cv


def score(model: TagModel, encoder: Encoder, examples: Sequence[Example]) -> np.ndarray:
    """Probabilities of `model` on `examples`, as it serves them (fast path included)."""
    return model.predict_proba([e.text for e in examples], encoder.encode)


def evaluate(
    model: TagModel,
    encoder: Encoder,
    examples: Sequence[Example],
    *,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Held-out report of `model` as served, its fast path, the single-head baselines and the
    keyword rules. `threshold`: the cut it is served with, if not the one training chose."""
    texts = [e.text for e in examples]
    emb = encoder.encode(texts)  # every embedding: the embedding-only baseline needs them all
    proba = model.predict_proba(texts, precomputed(texts, emb))
    cut = model.threshold if threshold is None else threshold
    report = evaluate_predictions(examples, proba, model.classes, threshold=cut)
    y = [e.tag for e in examples]
    report["fast_path"] = fast_path_report(model, texts, y)
    heads = {
        "tfidf_lr": model.tfidf_head.predict_proba(texts),
        "embedding_lr": model.embedding_head.predict_proba(emb),
        "keyword_rules": rules_predict(texts, model.classes),
    }
    report["baselines"] = {
        name: {"weighted_f1": weighted_f1(y, model.proba_to_tags(p))} for name, p in heads.items()
    }
    return report


def trained_key(example: Example) -> str:
    """How `TagModel.trained_on` knows an item: 64 bits of its text hash are plenty to tell
    a training set's items apart, at half the memory of the whole hash."""
    return example.text_hash[:16]


def seen_in_training(model: TagModel, examples: Sequence[Example]) -> int | None:
    """How many of `examples` the model was trained on; None for a model that does not say."""
    if not model.trained_on:
        return None
    return sum(trained_key(e) in model.trained_on for e in examples)


def fast_path_report(model: TagModel, texts: list[str], y: list[str]) -> dict[str, Any]:
    """How many items the fast path answered alone, and how many of those it got right."""
    proba, unsettled = model.fast_proba(texts)
    mask = np.ones(len(texts), dtype=bool)
    mask[unsettled] = False
    tags = model.proba_to_tags(proba)
    right = [t == truth for t, truth, m in zip(tags, y, mask, strict=True) if m]
    return {
        "threshold": model.fast_threshold,
        "share": float(mask.mean()) if len(mask) else 0.0,
        "precision": float(np.mean(right)) if right else None,
        "answered": int(mask.sum()),
    }


def train(
    train_examples: list[Example],
    eval_examples: list[Example],
    *,
    encoder: Encoder,
    target_precision: float,
    config: TrainConfig = DEFAULT_CONFIG,
    progress: Progress = lambda _step: None,
) -> TrainResult:
    """Fit on `train_examples` and evaluate on `eval_examples`, which it never sees."""
    started = time.perf_counter()
    # One BLAS thread: L-BFGS on small problems was 8x slower with threads contending.
    try:
        with threadpool_limits(1, user_api="blas"):
            return _train(
                train_examples,
                eval_examples,
                encoder=encoder,
                target_precision=target_precision,
                config=config,
                progress=progress,
                started=started,
            )
    except ValueError as exc:
        # Texts with no word of two letters or digits (emoji, single characters) pass
        # validation, and scikit-learn's TF-IDF refused them deep inside model selection.
        if "empty vocabulary" not in str(exc):
            raise
        raise DatasetError(NO_WORDS) from None


def _train(
    train_examples: list[Example],
    eval_examples: list[Example],
    *,
    encoder: Encoder,
    target_precision: float,
    config: TrainConfig,
    progress: Progress,
    started: float,
) -> TrainResult:
    leaked = check_leakage(train_examples, eval_examples)
    if leaked:
        raise DatasetError(f"{leaked} evaluation items also appear in the training data")
    model, cv = fit(
        train_examples,
        encoder=encoder,
        target_precision=target_precision,
        config=config,
        progress=progress,
    )
    model.trained_on = frozenset(trained_key(e) for e in train_examples)
    progress("evaluate")
    metrics = evaluate(model, encoder, eval_examples)
    params = {
        **cv["chosen"],
        "classes": model.classes,
        "target_precision": target_precision,
        "folds": config.folds,
        "seed": config.seed,
        "train_rows": len(train_examples),
        "eval_rows": len(eval_examples),
        "eval_hash": examples_hash(eval_examples),
        "encoder": encoder.path.name,
        # What made it: whoever loads the artifact later is told, and refuses what it cannot
        # trust (`runtime.load_artifact`).
        RUNTIME: current_runtime(),
    }
    return TrainResult(
        model=model,
        params=params,
        metrics=metrics,
        data_hash=examples_hash(train_examples),
        data_rows=len(train_examples),
        seconds=time.perf_counter() - started,
        cv=cv,
    )
