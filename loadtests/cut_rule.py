"""The acceptance cut's rule on training's own out-of-fold answers, with a few tags made wrong.

    python loadtests/cut_rule.py [--dataset ../shared/data/madewithml/dataset.csv]
                                 [--flips 0 4 8] [--seeds 8]

In-process, with the project's own training (no server, no database). For each number of
flips K and each seed, K tags of the shared dataset are replaced by another tag at random (a
reviewer's slip, a disputed label), and `fit` trains on all of it with fold seed `seed`. The
out-of-fold answers training judges its acceptance cut on are recorded (by wrapping
`choose_acceptance_cut` as `fit` calls it), and both rules are applied to them:

- `from_20th`: `choose_threshold` with cuts judged from the 20th answer on (the rule before
  session 32): at 0.99 a single wrong answer among the first 20 leaves no cut;
- `from_evidence`: `choose_acceptance_cut`, judged from `min_evidence(target)` answers on
  (100 at 0.99), which training uses.

Per run: the ranks of the first wrong answers, and each rule's coverage and out-of-fold
precision. Output: JSON Lines on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import service.ml.training as training
from service.config import DEFAULT_TAGS_FILE, EncoderKind, Settings
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import load_encoder
from service.ml.evaluation import choose_acceptance_cut, choose_threshold
from service.tags import load_tags

HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE.parent.parent / "shared" / "data" / "madewithml" / "dataset.csv"
TARGET = 0.99


def flipped(examples: list[Example], k: int, rng: np.random.Generator) -> list[Example]:
    """`examples` with `k` tags replaced by another tag, drawn at random."""
    tags = sorted({e.tag for e in examples})
    out = list(examples)
    for i in rng.choice(len(out), size=k, replace=False):
        e = out[i]
        out[i] = Example(e.title, e.description, str(rng.choice([t for t in tags if t != e.tag])))
    return out


def judged(confidence: np.ndarray, correct: np.ndarray, cut: float) -> dict[str, Any]:
    accepted = confidence >= cut
    return {
        "cut": round(cut, 4),
        "coverage": round(float(accepted.mean()), 3),
        "precision": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
    }


def one_run(encoder: Any, examples: list[Example], k: int, seed: int) -> dict[str, Any]:
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(confidence: np.ndarray, correct: np.ndarray, *, target: float) -> float:
        seen.append((confidence.copy(), correct.copy()))
        return choose_acceptance_cut(confidence, correct, target=target)

    rows = flipped(examples, k, np.random.default_rng(100 + seed))
    training.choose_acceptance_cut = record
    try:
        training.fit(
            rows, encoder=encoder, target_precision=TARGET, config=training.TrainConfig(seed=seed)
        )
    finally:
        training.choose_acceptance_cut = choose_acceptance_cut
    confidence, correct = seen[-1]
    order = np.argsort(-confidence)
    return {
        "flips": k,
        "seed": seed,
        "first_wrong_ranks": [int(i) + 1 for i in np.nonzero(~correct[order])[0][:4]],
        "from_20th": judged(
            confidence, correct, choose_threshold(confidence, correct, target=TARGET)
        ),
        "from_evidence": judged(
            confidence, correct, choose_acceptance_cut(confidence, correct, target=TARGET)
        ),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--flips", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--seeds", type=int, default=8, help="fold seeds per flip count")
    parser.add_argument(
        "--encoder", type=EncoderKind, default=Settings.model_fields["encoder"].default
    )
    parser.add_argument("--encoder-dir", type=Path, default=HERE / "results" / "encoder")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    examples, _ = load_dataset(args.dataset, tags=load_tags(DEFAULT_TAGS_FILE))
    encoder = load_encoder(args.encoder_dir, args.encoder, threads=2, cache_size=100_000)
    for k in args.flips:
        for seed in range(args.seeds):
            run = one_run(encoder, examples, k, seed)
            print(json.dumps(run), flush=True)
            print(f"[cut_rule] flips {k} seed {seed} done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
