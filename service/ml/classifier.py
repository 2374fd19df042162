"""The tag model: a weighted average of two calibrated linear heads, with a TF-IDF fast path.

`p = w * LR(MiniLM embedding) + (1 - w) * LR(TF-IDF)`. Logistic regression outputs are
probabilities already; the weight and both C values are chosen by cross-validation at
training time (see `training.py`).

The fast path: when the TF-IDF head alone is at least `fast_threshold` sure of an item, its
probabilities are the answer and the item is never encoded. Training chooses that cut on
out-of-fold predictions so that the items it skips are ones the full mix tags the same way,
at the target precision; evaluation scores the model exactly as it serves, fast path included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from service.ml.fastpath import LinearHead, LinearTfidf

Encode = Callable[[Sequence[str]], np.ndarray]
NEVER = 1.01  # a confidence cut no probability reaches
# What `TagModel.probe` scores: any text does; this one has words of every default tag.
PROBE_TEXT = "Serving a vision transformer and a language model in production"


def precomputed(texts: Sequence[str], embeddings: np.ndarray) -> Encode:
    """An `Encode` that serves the embeddings already computed for `texts` (row i is text i),
    for callers that need every embedding anyway: `predict_proba` then encodes nothing twice."""
    row = {text: i for i, text in enumerate(texts)}
    return lambda subset: embeddings[[row[t] for t in subset]]


@dataclass
class TagModel:
    """A fitted model: classes, both heads, the mixing weight and the two cuts."""

    classes: list[str]
    embedding_head: LogisticRegression
    tfidf_head: Pipeline
    weight: float
    threshold: float  # `auto` at or above this confidence, else `review`
    encoder: str = ""  # the ONNX file the embedding head was trained on
    fast_threshold: float = NEVER  # TF-IDF confidence at which the encoder is skipped
    # Lineage: the training items' text hashes (their first 16 hex digits), so an evaluation
    # can tell the items the model saw. Empty in models trained before it was kept.
    trained_on: frozenset[str] = frozenset()
    # Serving-speed copies of the heads (built on first use, never pickled).
    _fast: tuple[LinearHead, LinearTfidf] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _heads(self) -> tuple[LinearHead, LinearTfidf]:
        if self._fast is None:
            self._fast = (LinearHead(self.embedding_head), LinearTfidf(self.tfidf_head))
        return self._fast

    def predict_proba(
        self, texts: Sequence[str], encode: Encode, *, fast_path: bool = True
    ) -> np.ndarray:
        """Class probabilities, columns in `self.classes` order.

        `encode` is called once, with only the texts the fast path does not settle (all of
        them when `fast_path` is off).
        """
        proba, slow = self.fast_proba(texts, fast_path=fast_path)
        self.complete(texts, proba, slow, encode)
        return proba

    def probe(self) -> None:
        """Score one fixed text through both heads as serving does, which also builds the
        serving copies (`_heads`); ValueError when the answer is not a probability per class.
        The embedding head gets a unit vector of its width, so no encoder is needed and every
        loader can call it. Any other exception means the model cannot score at all: an
        estimator missing what serving reads (a model pickled by a release that changed it),
        which unpickled without a word and then failed every request it was given."""
        width = int(self.embedding_head.coef_.shape[1])
        unit = np.full((1, width), 1.0 / np.sqrt(width), dtype=np.float32)
        proba = self.predict_proba([PROBE_TEXT], lambda _texts: unit, fast_path=False)
        sums_to_one = proba.shape == (1, len(self.classes)) and abs(float(proba.sum()) - 1) < 1e-3
        if not (sums_to_one and np.isfinite(proba).all() and (proba >= 0).all()):
            raise ValueError(f"a probe text scores {proba.tolist()}, not a probability per tag")

    def fast_proba(
        self, texts: Sequence[str], *, fast_path: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The TF-IDF head's probabilities, and the rows the fast path leaves unsettled."""
        proba = self._heads()[1].predict_proba(list(texts))
        cut = self.fast_threshold if fast_path else NEVER
        return proba, np.flatnonzero(proba.max(axis=1) < cut)

    def complete(
        self, texts: Sequence[str], proba: np.ndarray, rows: Sequence[int], encode: Encode
    ) -> None:
        """Mix the embedding head into `rows` of `proba` (TF-IDF probabilities), in place."""
        if len(rows) == 0:
            return
        p_emb = self._heads()[0].predict_proba(encode([texts[i] for i in rows]))
        proba[rows] = self.weight * p_emb + (1.0 - self.weight) * proba[rows]

    def fast_mask(self, texts: Sequence[str]) -> np.ndarray:
        """Which of `texts` the fast path answers without the encoder."""
        mask = np.ones(len(texts), dtype=bool)
        mask[self.fast_proba(texts)[1]] = False
        return mask

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fast"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Artifacts written before the fast path existed have no cut: they never skip.
        self.__dict__.update({"fast_threshold": NEVER, **state})

    def proba_to_tags(self, proba: np.ndarray) -> list[str]:
        return [self.classes[i] for i in proba.argmax(axis=1)]
