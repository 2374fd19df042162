"""Feature extractors: TF-IDF word + character n-grams (the baseline and fast path)."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline


def tfidf_union() -> FeatureUnion:
    """Word 1-2 grams and character 2-5 grams within word boundaries, sublinear tf."""
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )


def tfidf_classifier(c: float) -> Pipeline:
    """The TF-IDF + logistic regression baseline."""
    return Pipeline(
        [
            ("tfidf", tfidf_union()),
            ("lr", LogisticRegression(C=c, class_weight="balanced", max_iter=3000)),
        ]
    )


def embedding_classifier(c: float) -> LogisticRegression:
    """Logistic regression head over normalised MiniLM embeddings."""
    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
