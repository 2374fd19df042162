"""Scoring fitted linear heads without sklearn's per-call overhead.

For one item, `Pipeline.predict_proba` spends ~2.4 ms in input validation, sparse-matrix
assembly and the FeatureUnion, for ~0.1 ms of arithmetic. `LinearTfidf` does the same
arithmetic (counts -> sublinear tf -> idf -> L2 norm per vectorizer -> linear layer ->
softmax) straight from the fitted vocabularies and weights; `LinearHead` does the dense one.
Both are checked against sklearn's own output in the tests.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _binary_or_multi(lr: LogisticRegression, z: np.ndarray) -> np.ndarray:
    if z.shape[1] == 1:  # two classes: sklearn's logistic on the single decision column
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1.0 - p, p])
    return softmax(z)


# The per-word n-gram cache of `char_wb` vectorizers: how many distinct words it keeps, and
# the longest word it keeps (a word of n characters has under 4n n-grams), so it stays within
# a few MB whatever clients send.
WORD_CACHE_SIZE = 1 << 14
WORD_CACHE_MAX_CHARS = 40


class _Vectorizer:
    """One fitted TfidfVectorizer as (analyzer, vocabulary, idf, offset into the union)."""

    def __init__(self, vec: TfidfVectorizer, offset: int) -> None:
        if vec.norm != "l2" or not vec.use_idf or vec.binary:
            raise ValueError("fast path supports l2-normalised, idf-weighted count vectorizers")
        self.analyze: Callable[[str], list[str]] = vec.build_analyzer()
        self.vocabulary: dict[str, int] = vec.vocabulary_
        self.idf = vec.idf_
        self.sublinear = vec.sublinear_tf
        self.offset = offset
        # Not a bound method of self: that was a reference cycle, so a model swapped out left
        # its vocabularies to wait for a full collection instead of going at once.
        self.counts = (
            self._word_counts(vec)
            if _by_word(vec)
            else functools.partial(_text_counts, self.analyze, self.vocabulary)
        )

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature indices (offset into the union) and their L2-normalised tf-idf values."""
        index, tf = self.counts(text)
        if self.sublinear:
            tf = 1.0 + np.log(tf)
        values = tf * self.idf[index]
        norm = float(np.sqrt(values @ values)) or 1.0
        return index + self.offset, values / norm

    def _word_counts(self, vec: TfidfVectorizer) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
        """`_text_counts` for `char_wb`, whose n-grams never cross a word: each word's
        vocabulary indices are computed once (by sklearn's analyzer, on the word alone) and a
        text's counts are the union of its words'. Words recur across texts, so a text costs
        about a cache lookup per word: 42 instead of 238 us for a dataset item here."""
        preprocess, analyze, vocabulary = vec.build_preprocessor(), self.analyze, self.vocabulary

        def indices(w: str) -> np.ndarray:
            # `w` is lowercased already; lowercasing again changes no character (checked over
            # all of Unicode), so sklearn's analyzer on `w` alone yields exactly its n-grams.
            found = np.array([vocabulary[g] for g in analyze(w) if g in vocabulary], np.int32)
            found.flags.writeable = False  # shared by every text the word occurs in
            return found

        cached = functools.lru_cache(maxsize=WORD_CACHE_SIZE)(indices)

        def word(w: str) -> np.ndarray:
            return cached(w) if len(w) <= WORD_CACHE_MAX_CHARS else indices(w)

        def counts(text: str) -> tuple[np.ndarray, np.ndarray]:
            parts = [word(w) for w in preprocess(text).split()]
            found = np.concatenate(parts) if parts else np.empty(0, np.int32)
            index, tf = np.unique(found, return_counts=True)
            return index.astype(np.intp), tf.astype(np.float64)

        return counts


def _text_counts(
    analyze: Callable[[str], list[str]], vocabulary: dict[str, int], text: str
) -> tuple[np.ndarray, np.ndarray]:
    """Vocabulary indices of the text's n-grams and their counts."""
    # Counting, matching against the vocabulary and gathering run in C (Counter, key-set
    # intersection, map/fromiter): a Python loop per n-gram cost most of the fast path.
    counts = Counter(analyze(text))
    known = list(counts.keys() & vocabulary.keys())
    index = np.fromiter(map(vocabulary.__getitem__, known), np.intp, len(known))
    tf = np.fromiter(map(counts.__getitem__, known), np.float64, len(known))
    return index, tf


def _by_word(vec: TfidfVectorizer) -> bool:
    """Whether the vectorizer is sklearn's own `char_wb` analysis of text content, which
    works word by word on the lowercased text split at white space. Anything else keeps the
    general path: accent stripping, for one, is not idempotent ("\u210c" -> "H")."""
    return (
        vec.analyzer == "char_wb"
        and vec.preprocessor is None
        and vec.strip_accents is None
        and vec.input == "content"
    )


class LinearTfidf:
    """`Pipeline([FeatureUnion of TfidfVectorizers], LogisticRegression)` as plain arithmetic."""

    def __init__(self, pipeline: Pipeline) -> None:
        union: FeatureUnion = pipeline.steps[0][1]
        self.lr: LogisticRegression = pipeline.steps[-1][1]
        self.vectorizers: list[_Vectorizer] = []
        offset = 0
        for _name, vec in union.transformer_list:
            self.vectorizers.append(_Vectorizer(vec, offset))
            offset += len(vec.vocabulary_)
        self.weights = self.lr.coef_.T.astype(np.float64)  # (features, classes)
        self.intercept = self.lr.intercept_

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        z = np.tile(self.intercept, (len(texts), 1)).astype(np.float64)
        for row, text in enumerate(texts):
            for vec in self.vectorizers:
                index, values = vec.features(text)
                if index.size:
                    z[row] += values @ self.weights[index]
        return _binary_or_multi(self.lr, z)


class LinearHead:
    """A fitted LogisticRegression over dense features, without input validation."""

    def __init__(self, lr: LogisticRegression) -> None:
        self.lr = lr
        self.weights = lr.coef_.T.astype(np.float64)
        self.intercept = lr.intercept_

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return _binary_or_multi(
            self.lr, features.astype(np.float64) @ self.weights + self.intercept
        )
