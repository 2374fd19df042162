"""Where the time of one scoring call goes, measured in-process, without HTTP.

Times each stage of tagflow's serving path on fresh dataset texts (no cache) at batch sizes
1, 8 and 16: tokenising, the full encoder (int8 and fp32, 1 and 2 threads), the two heads, and
`Predictor.score` as the API calls it. With `--accuracy` it also checks that the int8 encoder
keeps the production model's accuracy: cosine between int8 and fp32 embeddings, and held-out
weighted F1 / agreement of the production model fed by either encoder.

Reads the registry of `TAGFLOW_DATA_DIR` (and `TAGFLOW_ENCODER_DIR`); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from service.config import EncoderKind, Settings
from service.db import make_engine
from service.ml import registry
from service.ml.classifier import TagModel, precomputed
from service.ml.dataset import Example
from service.ml.encoder import Encoder, bundled_model_dir, load_encoder
from service.ml.evaluation import weighted_f1
from service.ml.pipeline import base_split
from service.ml.serving import LoadedModel, Predictor
from service.tags import load_tags

BATCHES = (1, 8, 16)


def median_ms(fn: Callable[[Any], object], batches: Sequence[Any]) -> float:
    """Median wall time of `fn` over the given batches, in ms (after one unmeasured call)."""
    fn(batches[0])
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        fn(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)


def fresh_batches(texts: list[str], size: int, count: int) -> list[list[str]]:
    """`count` batches of `size` texts no encoder has seen (unique suffixes)."""
    return [
        [f"{texts[(b * size + i) % len(texts)]} (probe {b}-{i})" for i in range(size)]
        for b in range(count)
    ]


def stage_timings(
    settings: Settings, model: TagModel, texts: list[str], repeats: int
) -> dict[str, dict[str, float]]:
    """ms per call of each stage, by batch size."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()  # as the encoder tokenises: one text per run, never padded
    encoders = {
        f"encode_{kind.value}_t{threads}": load_encoder(
            settings.resolved_encoder_dir, kind, threads=threads, cache_size=0
        )
        for kind in EncoderKind
        for threads in (1, 2)
    }
    serving = encoders[f"encode_{EncoderKind.ONNX_INT8.value}_t2"]
    tags = load_tags(settings.tags_file)
    predictor = Predictor(serving, tags)
    full_predictor = Predictor(serving, tags, fast_path=False)
    loaded = LoadedModel("probe", model)
    stages: dict[str, Callable[[list[str]], object]] = {
        "tokenize": tokenizer.encode_batch,
        **{name: enc.encode for name, enc in encoders.items()},
        "tfidf_head": model.tfidf_head.predict_proba,
        "predictor_score_int8_t2": lambda b: predictor.score(b, loaded),
        "predictor_score_int8_t2_fast_path_off": lambda b: full_predictor.score(b, loaded),
    }
    out: dict[str, dict[str, float]] = {}
    for size in BATCHES:
        batches = fresh_batches(texts, size, repeats + 1)
        row = {name: median_ms(fn, batches) for name, fn in stages.items()}
        embedded = [serving.encode(b) for b in batches]
        row["embedding_head"] = median_ms(model.embedding_head.predict_proba, embedded)
        out[f"batch_{size}"] = row
    return out


def int8_accuracy(settings: Settings, model: TagModel, held_out: list[Example]) -> dict[str, Any]:
    """Does int8 keep the accuracy? Cosine to fp32 and held-out F1 with either encoder."""
    texts = [e.text for e in held_out]
    truth = [e.tag for e in held_out]
    encoders: dict[str, Encoder] = {
        kind.value: load_encoder(settings.resolved_encoder_dir, kind, threads=2, cache_size=0)
        for kind in EncoderKind
    }
    emb = {name: enc.encode(texts) for name, enc in encoders.items()}
    cosine = (emb["onnx-int8"] * emb["onnx-fp32"]).sum(axis=1)
    tags = {
        name: model.proba_to_tags(model.predict_proba(texts, precomputed(texts, e)))
        for name, e in emb.items()
    }
    return {
        "held_out_items": len(texts),
        "model_trained_on": model.encoder,
        "cosine_int8_vs_fp32": {
            "min": round(float(cosine.min()), 4),
            "mean": round(float(cosine.mean()), 4),
        },
        "weighted_f1": {name: round(weighted_f1(truth, t), 4) for name, t in tags.items()},
        "tag_agreement_int8_vs_fp32": round(
            float(
                np.mean([a == b for a, b in zip(tags["onnx-int8"], tags["onnx-fp32"], strict=True)])
            ),
            4,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=30, help="measured calls per stage")
    parser.add_argument("--accuracy", action="store_true", help="also check int8 vs fp32")
    args = parser.parse_args()
    settings = Settings()
    with Session(make_engine(settings.resolved_database_url)) as session:
        row = registry.get_production(session)
        if row is None:
            raise SystemExit("no production model in the registry: train one first")
        model = registry.load_model(row, artifacts_dir=settings.artifacts_dir)
    train_set, held_out, _ = base_split(args.dataset, tags=load_tags(settings.tags_file))
    report: dict[str, Any] = {
        "model_version": row.version,
        "ms_per_call": stage_timings(settings, model, [e.text for e in train_set], args.repeats),
    }
    if args.accuracy:
        report["int8_accuracy"] = int8_accuracy(settings, model, held_out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
