"""The serving fast path computes exactly what sklearn computes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from service.ml.dataset import load_dataset
from service.ml.encoder import Encoder
from service.ml.fastpath import LinearHead, LinearTfidf
from service.ml.training import TrainResult
from service.tags import TagSet


def test_fast_heads_match_sklearn(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet, encoder: Encoder
) -> None:
    examples, _ = load_dataset(shared_dataset, tags=tags)
    texts = [e.text for e in examples] + ["", "zzzz qqqq", "ÄÖÜ émigré 東京"]
    model = shared_result.model
    expected = model.tfidf_head.predict_proba(texts)
    np.testing.assert_allclose(
        LinearTfidf(model.tfidf_head).predict_proba(texts), expected, rtol=0, atol=1e-10
    )
    emb = encoder.encode(texts[:50])
    # sklearn multiplies float32 embeddings in float32; the fast head in float64.
    np.testing.assert_allclose(
        LinearHead(model.embedding_head).predict_proba(emb),
        model.embedding_head.predict_proba(emb),
        rtol=0,
        atol=1e-6,
    )
    one = texts[3:4]
    np.testing.assert_allclose(
        LinearTfidf(model.tfidf_head).predict_proba(one), expected[3:4], rtol=0, atol=1e-10
    )


def test_fast_path_is_not_pickled(shared_result: TrainResult, encoder: Encoder) -> None:
    model = shared_result.model
    texts = ["Graph neural networks for molecules"]
    before = model.predict_proba(texts, encoder.encode(texts))
    restored = pickle.loads(pickle.dumps(model))
    assert restored._fast is None
    np.testing.assert_allclose(restored.predict_proba(texts, encoder.encode(texts)), before)
