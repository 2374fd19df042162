"""The tag model: a weighted average of two calibrated linear heads.

`p = w * LR(MiniLM embedding) + (1 - w) * LR(TF-IDF)`. Logistic regression outputs are
probabilities already; the weight and both C values are chosen by cross-validation at
training time (see `training.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from service.ml.fastpath import LinearHead, LinearTfidf


@dataclass
class TagModel:
    """A fitted model: classes, both heads, the mixing weight and the acceptance threshold."""

    classes: list[str]
    embedding_head: LogisticRegression
    tfidf_head: Pipeline
    weight: float
    threshold: float
    encoder: str = ""  # the ONNX file the embedding head was trained on
    # Serving-speed copies of the heads (built on first use, never pickled).
    _fast: tuple[LinearHead, LinearTfidf] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def predict_proba(self, texts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in `self.classes` order."""
        if self._fast is None:
            self._fast = (LinearHead(self.embedding_head), LinearTfidf(self.tfidf_head))
        emb_head, tfidf_head = self._fast
        p_emb = emb_head.predict_proba(embeddings)
        p_tf = tfidf_head.predict_proba(list(texts))
        return self.weight * p_emb + (1.0 - self.weight) * p_tf

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fast"] = None
        return state

    def proba_to_tags(self, proba: np.ndarray) -> list[str]:
        return [self.classes[i] for i in proba.argmax(axis=1)]
