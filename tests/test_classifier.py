"""The tag model's fast path: what it skips, and that it answers as the full model would."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.ml.classifier import NEVER, precomputed
from service.ml.dataset import load_dataset
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult
from service.tags import TagSet


class RecordingEncoder:
    """The real encoder, remembering which texts it was asked for."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.encoder.encode(texts)


def test_fast_path_encodes_only_what_it_does_not_settle(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet, encoder: Encoder
) -> None:
    model = shared_result.model
    assert 0.5 <= model.fast_threshold < NEVER
    _, held_out, _ = base_split(shared_dataset, tags=tags)
    texts = [e.text for e in held_out]
    fast = model.fast_mask(texts)
    assert 0.2 <= fast.mean() <= 0.9, fast.mean()

    spy = RecordingEncoder(encoder)
    with_fast = model.predict_proba(texts, spy.encode)
    assert spy.calls == [[t for t, f in zip(texts, fast, strict=True) if not f]]

    spy.calls.clear()
    full = model.predict_proba(texts, spy.encode, fast_path=False)
    assert spy.calls == [texts]
    # Where the fast path answered, it gave the full model's tag, with the TF-IDF head's scores.
    np.testing.assert_array_equal(with_fast[fast].argmax(axis=1), full[fast].argmax(axis=1))
    np.testing.assert_allclose(with_fast[fast], model.tfidf_head.predict_proba(texts)[fast])
    np.testing.assert_allclose(with_fast[~fast], full[~fast])
    np.testing.assert_allclose(with_fast.sum(axis=1), 1.0)


def test_a_batch_the_fast_path_settles_never_calls_the_encoder(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet, encoder: Encoder
) -> None:
    model = shared_result.model
    examples, _ = load_dataset(shared_dataset, tags=tags)
    texts = [e.text for e in examples]
    sure = [t for t, f in zip(texts, model.fast_mask(texts), strict=True) if f][:5]
    assert len(sure) == 5
    spy = RecordingEncoder(encoder)
    model.predict_proba(sure, spy.encode)
    assert spy.calls == []


def test_artifact_from_before_the_fast_path_never_skips(shared_result: TrainResult) -> None:
    state = pickle.loads(pickle.dumps(shared_result.model)).__dict__.copy()
    del state["fast_threshold"]
    old = object.__new__(type(shared_result.model))
    old.__setstate__(state)
    assert old.fast_threshold == NEVER
    assert not old.fast_mask(["Transformers for text classification"]).any()


def test_precomputed_embeddings_give_the_served_answer(
    shared_result: TrainResult, shared_dataset: Path, tags: TagSet, encoder: Encoder
) -> None:
    """Callers that already hold every embedding get exactly what serving computes."""
    model = shared_result.model
    _, held_out, _ = base_split(shared_dataset, tags=tags)
    texts = [e.text for e in held_out]
    served = model.predict_proba(texts, encoder.encode)
    np.testing.assert_allclose(
        model.predict_proba(texts, precomputed(texts, encoder.encode(texts))), served
    )
