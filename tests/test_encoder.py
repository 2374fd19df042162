"""The ONNX encoder: fused, close to fp32, and an embedding is a function of its text alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.config import EncoderKind
from service.ml.dataset import load_dataset
from service.ml.encoder import Encoder, ensure_onnx, load_encoder
from service.tags import TagSet


def _texts(shared_dataset: Path, tags: TagSet, n: int) -> list[str]:
    examples, _ = load_dataset(shared_dataset, tags=tags)
    return [e.text for e in examples[:n]]


def test_embedding_does_not_depend_on_batch_mates(
    encoder_dir: Path, shared_dataset: Path, tags: TagSet
) -> None:
    """Dynamic int8 scales by the whole input; batched, a text would change with its company."""
    uncached = load_encoder(encoder_dir, EncoderKind.ONNX_INT8, threads=1, cache_size=0)
    texts = _texts(shared_dataset, tags, 12)
    together = uncached.encode(texts)
    for i in (0, 5, 11):
        np.testing.assert_array_equal(uncached.encode([texts[i]])[0], together[i])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_int8_stays_close_to_fp32(encoder_dir: Path, shared_dataset: Path, tags: TagSet) -> None:
    texts = _texts(shared_dataset, tags, 80)
    int8 = load_encoder(encoder_dir, EncoderKind.ONNX_INT8, cache_size=0).encode(texts)
    fp32 = load_encoder(encoder_dir, EncoderKind.ONNX_FP32, cache_size=0).encode(texts)
    cosine = (int8 * fp32).sum(axis=1)
    assert cosine.min() >= 0.98, cosine.min()
    assert cosine.mean() >= 0.99, cosine.mean()


def test_export_matches_sentence_transformers_at_every_length(
    encoder_dir: Path, shared_dataset: Path, tags: TagSet
) -> None:
    """The export is traced at 8 tokens, and the tracer warns that a branch on the padding
    length is frozen; embeddings of texts from 3 to 256 tokens must still equal the bundled
    model's own, run by sentence-transformers on PyTorch."""
    from sentence_transformers import SentenceTransformer

    from service.ml.encoder import MAX_TOKENS, bundled_model_dir

    long_text = " ".join(_texts(shared_dataset, tags, 40))  # truncated at MAX_TOKENS
    texts = ["CNNs", *_texts(shared_dataset, tags, 30), long_text]
    reference = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    reference.max_seq_length = MAX_TOKENS
    expected = reference.encode(texts, normalize_embeddings=True, batch_size=1)
    got = load_encoder(encoder_dir, EncoderKind.ONNX_FP32, cache_size=0).encode(texts)
    cosine = (expected * got).sum(axis=1)
    assert cosine.min() >= 0.9999, (cosine.argmin(), cosine.min())


def test_export_is_fused_and_quantised(encoder_dir: Path) -> None:
    """The speed claims rest on ORT's fused kernels and int8 weights being in the files."""
    fp32_ops = {
        n.op_type for n in onnx.load(ensure_onnx(encoder_dir, EncoderKind.ONNX_FP32)).graph.node
    }
    assert {"SkipLayerNormalization", "BiasGelu"} <= fp32_ops
    int8_ops = [
        n.op_type for n in onnx.load(ensure_onnx(encoder_dir, EncoderKind.ONNX_INT8)).graph.node
    ]
    # Every weight product is int8: 6 layers x (Q, K, V, attention output, 2 feed-forward).
    assert int8_ops.count("MatMulInteger") + int8_ops.count("DynamicQuantizeMatMul") >= 36


def test_cache_returns_the_same_vector_without_running(encoder: Encoder) -> None:
    text = "A cached sentence about object detection."
    first = encoder.encode([text])
    session = encoder._session
    encoder._session = None  # type: ignore[assignment]  # a cache miss would now fail loudly
    try:
        np.testing.assert_array_equal(encoder.encode([text, text]), np.vstack([first, first]))
    finally:
        encoder._session = session


def test_the_kind_may_be_given_by_name(encoder_dir: Path) -> None:
    assert ensure_onnx(encoder_dir, "onnx-int8").name == "minilm-fused-int8.onnx"  # type: ignore[arg-type]
    assert ensure_onnx(encoder_dir, "onnx-fp32").name == "minilm-fused.onnx"  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ensure_onnx(encoder_dir, "int8")  # type: ignore[arg-type]


_EXPORT_AND_ENCODE = """
import logging, sys
import os
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from service.ml.encoder import load_encoder
encoder = load_encoder(Path(sys.argv[1]), "onnx-int8", threads=1, cache_size=0)
print(float(encoder.encode(["Graph neural networks for molecules."])[0][0]))
"""


def test_processes_starting_together_export_once(tmp_path: Path) -> None:
    """An API and a worker started at once on an empty encoder dir both export: they wrote the
    same temporary files, and one died (FileNotFoundError) when the other moved them into place.
    Now one exports while the other waits for it, and both serve the same file."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_AND_ENCODE, str(tmp_path / "enc")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1, outputs
    exports = sum(err.count("exporting MiniLM to ONNX") for _, err in outputs)
    assert exports == 1, [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        ".export.lock",
        "minilm-fused-int8.onnx",
        "minilm-fused.onnx",
    ]
