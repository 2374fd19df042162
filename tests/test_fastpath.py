"""The serving fast path computes exactly what sklearn computes."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np

from service.ml.dataset import load_dataset
from service.ml.encoder import Encoder
from service.ml.fastpath import LinearHead, LinearTfidf, _text_counts
from service.ml.training import TrainResult
from service.tags import TagSet

# Edge cases for the analyzers: empty, unknown n-grams, accents and scripts, case rules that
# depend on context (Greek final sigma, dotted I), every kind of white space, repeated words,
# and a word too long for the word cache.
TRICKY = [
    "",
    "zzzz qqqq",
    "ÄÖÜ émigré 東京",
    "ΟΔΟΣ ΟΔΟΣ odos. İstanbul STRASSE straße",
    "tabs\tand\nnew lines\r\n  and\x1cseparators\u2003em space\u00a0nbsp",
    "model model model MODEL Model",
    "x" * 300 + " " + "transformers" * 10,
]


def test_fast_heads_match_sklearn(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet, encoder: Encoder
) -> None:
    examples, _ = load_dataset(shared_dataset, tags=tags)
    texts = [e.text for e in examples] + TRICKY
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


def test_word_by_word_char_ngrams_count_exactly_what_the_analyzer_counts(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet
) -> None:
    examples, _ = load_dataset(shared_dataset, tags=tags)
    fast = LinearTfidf(shared_result.model.tfidf_head)
    # The char_wb one: the other counts with the general path, `_text_counts`.
    [by_word] = [v for v in fast.vectorizers if not isinstance(v.counts, functools.partial)]
    for text in [e.text for e in examples] + TRICKY:
        for _ in range(2):  # the second time from the word cache
            index, tf = by_word.counts(text)
            expected_index, expected_tf = _text_counts(by_word.analyze, by_word.vocabulary, text)
            order = np.argsort(expected_index)
            np.testing.assert_array_equal(index, expected_index[order])
            np.testing.assert_array_equal(tf, expected_tf[order])


def test_fast_path_is_not_pickled(shared_result: TrainResult, encoder: Encoder) -> None:
    model = shared_result.model
    texts = ["Graph neural networks for molecules"]
    before = model.predict_proba(texts, encoder.encode(texts))
    restored = pickle.loads(pickle.dumps(model))
    assert restored._fast is None
    np.testing.assert_allclose(restored.predict_proba(texts, encoder.encode(texts)), before)
