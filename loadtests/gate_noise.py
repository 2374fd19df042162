"""The quality gate's per-tag precision rule on evaluation sets of a young deployment's size.

    python loadtests/gate_noise.py [--dataset ../shared/data/madewithml/dataset.csv] [--seeds N]

In-process, with the project's own training, evaluation and gate (no server, no database).
For each seed the shared dataset is split, stratified, into a **truth** part (30%), which
tells whether a candidate is really better, and the rest; of the rest 20% is the gate's
**evaluation** set (about 107 items, 10 to 45 per tag, as a deployment's base split plus
held-out labels) and 80% the **pool**. Production is trained on half the pool. Three
candidates are then gated against it, each scored on the evaluation set as `retrain` scores
them:

- `more_labels`: the whole pool (production's rows plus as many reviewer labels), which a
  retraining on new labels is;
- `noisy_labels`: production's rows with a fifth of their tags replaced by another tag;
- `fewer_rows`: half of production's rows.

The last two are worse by construction. Each verdict is taken twice: by the gate as it is
(a tag's precision may drop by 0.02, or by one of the candidate's answers with the tag when
that is more) and by the fixed 0.02 it replaced (recomputed from the same checks). Beside
them, the weighted F1 of both models on the truth part, and whether any tag's precision there
fell by more than 0.02.

Output: JSON on stdout (per seed and summed per candidate); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.config import DEFAULT_TAGS_FILE, EncoderKind, Settings
from service.ml.classifier import TagModel
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder, load_encoder
from service.ml.gate import MAX_CLASS_PRECISION_DROP, answer_count, apply_gate
from service.ml.training import evaluate, fit, split_examples
from service.tags import load_tags

HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE.parent.parent / "shared" / "data" / "madewithml" / "dataset.csv"
TARGET = 0.99
CANDIDATES = ("more_labels", "noisy_labels", "fewer_rows")


def say(message: str) -> None:
    print(f"[gate_noise] {message}", file=sys.stderr, flush=True)


def fixed_drop_verdict(gate: dict[str, Any]) -> bool:
    """The gate's verdict under the rule it replaced: every known tag's precision within 0.02
    of production's, the other checks as they are."""
    for check in gate["checks"]:
        measured = check["candidate"] is not None and check["production"] is not None
        if check["name"].startswith("precision:") and measured:
            if check["candidate"] < check["production"] - MAX_CLASS_PRECISION_DROP - 1e-9:
                return False
        elif not check["passed"]:
            return False
    return True


def noisy(examples: list[Example], rng: np.random.Generator, share: float) -> list[Example]:
    """`examples` with `share` of their tags replaced by another tag, drawn at random."""
    tags = sorted({e.tag for e in examples})
    out = list(examples)
    for i in rng.choice(len(out), size=int(share * len(out)), replace=False):
        e = out[i]
        other = [t for t in tags if t != e.tag]
        out[i] = Example(e.title, e.description, str(rng.choice(other)))
    return out


def precision_fell(cand: dict[str, Any], prod: dict[str, Any]) -> bool:
    """Whether any tag production answers lost more than 0.02 precision on the truth part."""
    for tag, figures in prod["per_class"].items():
        before = figures.get("precision")
        after = cand["per_class"].get(tag, {}).get("precision")
        if before is not None and (after is None or after < before - MAX_CLASS_PRECISION_DROP):
            return True
    return False


def train(encoder: Encoder, rows: list[Example]) -> TagModel:
    model, _ = fit(rows, encoder=encoder, target_precision=TARGET)
    return model


def one_seed(encoder: Encoder, shared: list[Example], seed: int) -> dict[str, Any]:
    rest, truth = split_examples(shared, share=0.3, seed=seed)
    pool, evaluation = split_examples(rest, share=0.2, seed=seed)
    order = np.random.default_rng(seed).permutation(len(pool))
    pool = [pool[i] for i in order]
    base = pool[: len(pool) // 2]
    rng = np.random.default_rng(1000 + seed)
    rows = {
        "more_labels": pool,
        "noisy_labels": noisy(base, rng, 0.2),
        "fewer_rows": base[: len(base) // 2],
    }
    production = train(encoder, base)
    prod_eval = evaluate(production, encoder, evaluation)
    prod_truth = evaluate(production, encoder, truth)
    answers = {t: answer_count(prod_eval, t) for t in prod_eval["classes"]}
    out: dict[str, Any] = {"seed": seed, "eval_items": len(evaluation), "answers": answers}
    for name in CANDIDATES:
        model = train(encoder, rows[name])
        cand_eval = evaluate(model, encoder, evaluation)
        gate = apply_gate(cand_eval, prod_eval, target_precision=TARGET)
        cand_truth = evaluate(model, encoder, truth)
        out[name] = {
            "rows": len(rows[name]),
            "eval_f1_delta": round(cand_eval["weighted_f1"] - prod_eval["weighted_f1"], 4),
            "eval_auto_precision": cand_eval["auto"]["precision"],
            "passes": gate["passed"],
            "passes_fixed_drop": fixed_drop_verdict(gate),
            "failed": gate["failed"],
            "truth_f1_delta": round(cand_truth["weighted_f1"] - prod_truth["weighted_f1"], 4),
            "truth_precision_fell": precision_fell(cand_truth, prod_truth),
        }
        say(f"seed {seed} {name}: {out[name]}")
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for name in CANDIDATES:
        rows = [run[name] for run in runs]
        summary[name] = {
            "passes": sum(r["passes"] for r in rows),
            "passes_fixed_drop": sum(r["passes_fixed_drop"] for r in rows),
            "of": len(rows),
            "truth_f1_delta_mean": round(float(np.mean([r["truth_f1_delta"] for r in rows])), 4),
            "truly_better": sum(
                r["truth_f1_delta"] > 0 and not r["truth_precision_fell"] for r in rows
            ),
            "refused_only_for_precision": sum(
                bool(r["failed"]) and all(f.startswith("precision:") for f in r["failed"])
                for r in rows
            ),
            "failed_by_check": dict(
                Counter(f.split(":")[0] for r in rows for f in r["failed"]).most_common()
            ),
        }
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seeds", type=int, default=10, help="splits to run (default 10)")
    parser.add_argument(
        "--encoder", type=EncoderKind, default=Settings.model_fields["encoder"].default
    )
    parser.add_argument("--encoder-dir", type=Path, default=HERE / "results" / "encoder")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    tags = load_tags(DEFAULT_TAGS_FILE)
    shared, _ = load_dataset(args.dataset, tags=tags)
    encoder = load_encoder(args.encoder_dir, args.encoder, threads=2, cache_size=100_000)
    encoder.encode([e.text for e in shared])  # once; every later call hits the cache
    runs = [one_seed(encoder, shared, seed) for seed in range(args.seeds)]
    result = {
        "dataset_rows": len(shared),
        "summary": summarize(runs),
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
