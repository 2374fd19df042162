"""The manual baseline: keyword rules a person would write before any model.

Kept and measured next to every model so the ML has to earn its place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

KEYWORDS: dict[str, tuple[str, ...]] = {
    "natural-language-processing": (
        "text",
        "language",
        "nlp",
        "bert",
        "gpt",
        "llm",
        "transformer",
        "translation",
        "sentiment",
        "token",
        "summar",
        "question answering",
        "chatbot",
        "word",
        "ner",
    ),
    "computer-vision": (
        "image",
        "vision",
        "video",
        "detection",
        "segmentation",
        "cnn",
        "gan",
        "face",
        "pose",
        "yolo",
        "pixel",
        "camera",
        "ocr",
        "photo",
    ),
    "mlops": (
        "deploy",
        "production",
        "serving",
        "monitor",
        "pipeline",
        "mlops",
        "docker",
        "kubernetes",
        "tracking",
        "registry",
        "feature store",
        "ci/cd",
        "drift",
    ),
}


def rules_predict(texts: Sequence[str], classes: list[str], fallback: str = "other") -> np.ndarray:
    """One-hot 'probabilities' from keyword counts; ties and no hits go to `fallback`."""
    proba = np.zeros((len(texts), len(classes)))
    for i, text in enumerate(texts):
        lowered = text.lower()
        counts = {
            tag: sum(len(re.findall(r"\b" + re.escape(k), lowered)) for k in words)
            for tag, words in KEYWORDS.items()
            if tag in classes
        }
        best = max(counts.items(), key=lambda kv: kv[1], default=(fallback, 0))
        tag = best[0] if best[1] > 0 else fallback
        proba[i, classes.index(tag if tag in classes else classes[0])] = 1.0
    return proba
