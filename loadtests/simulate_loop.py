"""The human-in-the-loop, simulated: F1 against labels spent, priority queue vs random order.

    python loadtests/simulate_loop.py [--dataset ../shared/data/madewithml/dataset.csv] [--quick]

In-process, with the project's own code (no server, no Redis, no database):

1. The shared dataset is split, stratified, into a held-out **test** part (30%) and an
   incoming **stream** (70%), shuffled; items whose content is in the bundled seed are dropped.
2. The first model is trained on the bundled seed only (`service/data/seed.csv`).
3. Each round the next chunk of the stream (8K items by default) arrives and is scored by the
   current model. Items below the model's acceptance threshold (status `review`) join the
   **pool**, together with the pool items not labelled yet; so do accepted items in the audit
   sample (`in_audit_sample`, the service's own rule and `audit_share`, drawn from every item
   as the service draws it; sampled items get the audit boost); the other accepted
   items are never labelled. Arrivals outpace the reviewer (about a quarter of a chunk
   goes to review, 2K), as they do when a review queue is needed at all: with a pool no
   larger than K both strategies would label the same items and compare nothing.
4. A simulated reviewer labels K pool items with their true tags, chosen either
   - **priority**: margin uncertainty under the current model (`priority.margin_uncertainty`,
     `priority.priority`, with the audit boost for audit items) ordered greedily with the
     diversity penalty (`priority.rank_diverse`), as the review queue presents them; or
   - **random**: uniformly from the pool.
5. After every K labels the model is retrained on seed + labels so far and evaluated on the
   test part: weighted F1, and the share accepted automatically (coverage) with its precision.
6. When the stream has arrived and the pool is empty, the run ends.

`--pool all` is a variant outside what the service does: every arrived item, auto-accepted
ones too, may be labelled (as with an audit budget), so the loop can spend up to the whole
stream; priority vs random is then plain active learning vs random sampling of the stream.

The reference is the **all-labels model**: seed + every stream item with its true label
(including the items the loop accepted automatically and never paid for). The goal: within
0.01 weighted F1 of it after at most half as many labels as the stream has items.

Retraining config: the loop retrains a few dozen times per strategy and seed, so it uses a
faster search than `tagflow train` (`TrainConfig()`): the embedding head's C fixed at 4.0 (what
the full 3-value search picks on the seed and on the shared data), 3 cross-validation folds
instead of 5; the mixing weight is still chosen by cross-validation (free: it reuses the
out-of-fold probabilities) and the threshold still from out-of-fold predictions. The reference
uses the same config, so the comparison is like for like; the all-labels F1 with the full
default config is reported beside it for information.

Output: JSON (curves per seed, mean curves, reference, first label count within 0.01, goal)
and a PNG next to it. `loadtests/results/` is git-ignored. Mean curves treat each seed's curve
as a step function of the budget (a loop that ran out of items keeps its last model).
Run time on 2 quiet cores: `--quick` (1 seed, K=50) about 2 minutes; the default (3 seeds,
K=25) about 5-10; `--pool all --max-labels 325` about 10. Busy cores stretch these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, EncoderKind, Settings
from service.crud.predictions import in_audit_sample
from service.ml.classifier import TagModel, precomputed
from service.ml.dataset import Example, load_dataset
from service.ml.encoder import Encoder, load_encoder
from service.ml.evaluation import evaluate_predictions
from service.ml.priority import margin_uncertainty, priority, rank_diverse
from service.ml.training import TrainConfig, fit, split_examples
from service.tags import load_tags

HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE.parent.parent / "shared" / "data" / "madewithml" / "dataset.csv"
STRATEGIES = ("priority", "random")
TOLERANCE = 0.01
FAST_CONFIG = TrainConfig(embedding_cs=(4.0,), folds=3)


@dataclass(frozen=True)
class Plan:
    """What one invocation simulates."""

    k: int
    chunk: int
    seeds: tuple[int, ...]
    test_share: float
    target_precision: float
    full_reference: bool
    pool: str = "review"
    max_labels: int | None = None
    audit_share: float = 0.0

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        common = {
            "test_share": 0.3,
            "target_precision": args.target_precision,
            "pool": args.pool,
            "max_labels": args.max_labels,
            "audit_share": args.audit_share,
        }
        if args.quick:
            return cls(
                k=args.k or 50,
                chunk=args.chunk or 400,
                seeds=tuple(args.seeds or (0,)),
                full_reference=False,
                **common,
            )
        return cls(
            k=args.k or 25,
            chunk=args.chunk or 200,
            seeds=tuple(args.seeds or (0, 1, 2)),
            full_reference=True,
            **common,
        )

    def done(self, labels: int) -> bool:
        return self.max_labels is not None and labels >= self.max_labels


@dataclass
class Lab:
    """Everything a run needs: the encoder (with its cache) and the data."""

    encoder: Encoder
    seed: list[Example]
    shared: list[Example]
    plan: Plan

    def train(self, examples: list[Example], config: TrainConfig = FAST_CONFIG) -> TagModel:
        model, _ = fit(
            examples,
            encoder=self.encoder,
            target_precision=self.plan.target_precision,
            config=config,
        )
        return model

    def proba(self, model: TagModel, examples: list[Example]) -> np.ndarray:
        texts = [e.text for e in examples]
        return model.predict_proba(texts, self.encoder.encode)

    def measure(self, model: TagModel, test: list[Example]) -> dict[str, Any]:
        """Weighted F1 and automatic acceptance on the held-out test part."""
        report = evaluate_predictions(
            test, self.proba(model, test), model.classes, threshold=model.threshold
        )
        auto = report["auto"]
        return {
            "weighted_f1": round(report["weighted_f1"], 4),
            "auto_coverage": round(auto["coverage"], 4),
            "auto_precision": None if auto["precision"] is None else round(auto["precision"], 4),
            "threshold": round(model.threshold, 4),
        }


def say(message: str) -> None:
    print(f"[simulate] {message}", file=sys.stderr, flush=True)


def split(lab: Lab, seed: int) -> tuple[list[Example], list[Example]]:
    """Held-out test part and the shuffled stream, neither overlapping the seed."""
    seen = {e.text_hash for e in lab.seed}
    fresh = [e for e in lab.shared if e.text_hash not in seen]
    stream, test = split_examples(fresh, share=lab.plan.test_share, seed=seed)
    order = np.random.default_rng(seed).permutation(len(stream))
    return [stream[i] for i in order], test


def choose(
    lab: Lab,
    model: TagModel,
    pool: list[Example],
    strategy: str,
    rng: np.random.Generator,
    sampled: set[str],
) -> list[int]:
    """Indices into `pool` of the next K items the reviewer labels."""
    k = min(lab.plan.k, len(pool))
    if strategy == "random":
        return [int(i) for i in rng.choice(len(pool), size=k, replace=False)]
    texts = [e.text for e in pool]
    embeddings = lab.encoder.encode(texts)
    proba = model.predict_proba(texts, precomputed(texts, embeddings))
    base = np.array(
        [
            priority(
                uncertainty=margin_uncertainty(dict(zip(model.classes, row, strict=True))),
                audit=e.text_hash in sampled,
            )
            for row, e in zip(proba, pool, strict=True)
        ]
    )
    return rank_diverse(embeddings, base, k)


@dataclass
class Arrival:
    """What scoring an arriving chunk sent to review, and how the automatic path did."""

    review: list[Example]
    audit: dict[str, bool]  # audit-sampled accepted items: text hash -> accepted tag was right
    sampled: set[str]  # every audit-sampled item, accepted or not (they get the audit boost)
    auto: int
    auto_right: int


def arrive(lab: Lab, model: TagModel, chunk: list[Example]) -> Arrival:
    """Score an arriving chunk as the service would and route it."""
    proba = lab.proba(model, chunk)
    accepted = proba.max(axis=1) >= model.threshold
    right = np.array(
        [model.classes[i] == e.tag for i, e in zip(proba.argmax(axis=1), chunk, strict=True)]
    )
    review = [e for e, a in zip(chunk, accepted, strict=True) if not a]
    # The service samples every prediction, accepted or not; live precision of automatic
    # acceptance is measured on the accepted ones.
    sampled = {
        e.text_hash for e in chunk if in_audit_sample(e.text_hash, share=lab.plan.audit_share)
    }
    audit = {
        e.text_hash: bool(r)
        for e, a, r in zip(chunk, accepted, right, strict=True)
        if a and e.text_hash in sampled
    }
    return Arrival(
        review=review + [e for e in chunk if e.text_hash in audit],
        audit=audit,
        sampled=sampled,
        auto=int(accepted.sum()),
        auto_right=int((accepted & right).sum()),
    )


def run_strategy(
    lab: Lab, start: TagModel, stream: list[Example], test: list[Example], strategy: str, seed: int
) -> list[dict[str, Any]]:
    """One loop from the seed model until the stream has arrived and the pool is empty."""
    rng = np.random.default_rng(1000 + seed)
    model = start
    labelled: list[Example] = []
    pool: list[Example] = []
    audited: dict[str, bool] = {}
    sampled: set[str] = set()
    arrived = auto = auto_right = 0
    curve = [{"labels": 0, "pool": 0, "arrived": 0, **lab.measure(model, test)}]
    while (arrived < len(stream) or pool) and not lab.plan.done(len(labelled)):
        chunk = stream[arrived : arrived + lab.plan.chunk]
        if chunk:
            arrival = arrive(lab, model, chunk)
            pool += chunk if lab.plan.pool == "all" else arrival.review
            audited |= arrival.audit
            sampled |= arrival.sampled
            arrived += len(chunk)
            auto, auto_right = auto + arrival.auto, auto_right + arrival.auto_right
        if not pool:
            continue
        picked = set(choose(lab, model, pool, strategy, rng, sampled))
        labelled += [pool[i] for i in sorted(picked)]
        pool = [e for i, e in enumerate(pool) if i not in picked]
        model = lab.train(lab.seed + labelled)
        done = {e.text_hash for e in labelled} & audited.keys()
        curve.append(
            {
                "labels": len(labelled),
                "pool": len(pool),
                "arrived": arrived,
                "stream_auto": auto,
                "stream_auto_precision": round(auto_right / auto, 4) if auto else None,
                "audit_labels": len(done),
                "audit_precision": round(float(np.mean([audited[h] for h in done])), 4)
                if done
                else None,
                **lab.measure(model, test),
            }
        )
    return curve


def first_within(curve: list[dict[str, Any]], reference: float) -> dict[str, int | None]:
    """First label count within TOLERANCE of the reference, and the first from which it stays."""
    ok = [p["weighted_f1"] >= reference - TOLERANCE for p in curve]
    first = next((p["labels"] for p, good in zip(curve, ok, strict=True) if good), None)
    stays = next((curve[i]["labels"] for i in range(len(curve)) if all(ok[i:])), None)
    return {"first": first, "sustained": stays}


def run_seed(lab: Lab, seed: int) -> dict[str, Any]:
    """Both strategies and the references for one random split."""
    started = time.perf_counter()
    stream, test = split(lab, seed)
    say(f"seed {seed}: stream {len(stream)}, test {len(test)}; all-labels reference")
    everything = lab.seed + stream
    reference = lab.measure(lab.train(everything), test)
    result: dict[str, Any] = {
        "seed": seed,
        "stream": len(stream),
        "test": len(test),
        "reference": reference,
    }
    if lab.plan.full_reference:
        result["reference_default_config"] = lab.measure(lab.train(everything, TrainConfig()), test)
    start = lab.train(lab.seed)
    for strategy in STRATEGIES:
        curve = run_strategy(lab, start, stream, test, strategy, seed)
        result[strategy] = {"curve": curve, "within": first_within(curve, reference["weighted_f1"])}
        say(
            f"seed {seed} {strategy}: seed-only F1 {curve[0]['weighted_f1']:.3f}, final "
            f"{curve[-1]['weighted_f1']:.3f} after {curve[-1]['labels']} labels; reference "
            f"{reference['weighted_f1']:.3f}; within 0.01 at {result[strategy]['within']}"
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def budget_curve(curve: list[dict[str, Any]], grid: list[int]) -> list[dict[str, Any]]:
    """The curve as a step function of the budget: at x labels, the last point with <= x.

    A loop that ended (nothing left to label) keeps its final model for any larger budget.
    """
    return [[p for p in curve if p["labels"] <= x][-1] for x in grid]


def mean_curve(runs: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
    """Mean over seeds at every label count any seed reached (step functions of the budget)."""
    grid = sorted(set().union(*({p["labels"] for p in r[strategy]["curve"]} for r in runs)))
    per_seed = [budget_curve(r[strategy]["curve"], grid) for r in runs]
    out = []
    for i, labels in enumerate(grid):
        points = [c[i] for c in per_seed]
        precisions = [p["auto_precision"] for p in points if p["auto_precision"] is not None]
        out.append(
            {
                "labels": labels,
                "weighted_f1": round(float(np.mean([p["weighted_f1"] for p in points])), 4),
                "auto_coverage": round(float(np.mean([p["auto_coverage"] for p in points])), 4),
                "auto_precision": round(float(np.mean(precisions)), 4) if precisions else None,
            }
        )
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean curves, the mean reference and the goal for each strategy."""
    reference = float(np.mean([r["reference"]["weighted_f1"] for r in runs]))
    half = min(r["stream"] for r in runs) / 2
    summary: dict[str, Any] = {
        "reference_weighted_f1": round(reference, 4),
        "half_stream_labels": half,
        "tolerance": TOLERANCE,
    }
    if all("reference_default_config" in r for r in runs):
        summary["reference_default_config_weighted_f1"] = round(
            float(np.mean([r["reference_default_config"]["weighted_f1"] for r in runs])), 4
        )
    summary["seed_only_weighted_f1"] = round(
        float(np.mean([r["priority"]["curve"][0]["weighted_f1"] for r in runs])), 4
    )
    for strategy in STRATEGIES:
        curve = mean_curve(runs, strategy)
        within = first_within(curve, reference)
        at_half = [p for p in curve if p["labels"] <= half][-1]
        summary[strategy] = {
            "mean_curve": curve,
            "within": within,
            "per_seed_first": [r[strategy]["within"]["first"] for r in runs],
            "f1_at_half": at_half,
            "goal_met": within["first"] is not None and within["first"] <= half,
            "goal_met_sustained": within["sustained"] is not None and within["sustained"] <= half,
        }
    return summary


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """F1 and automatic coverage against labels spent, both strategies, with the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"priority": "tab:blue", "random": "tab:orange"}
    fig, (ax_f1, ax_cov) = plt.subplots(1, 2, figsize=(14, 5.5))
    for strategy, colour in colours.items():
        for r in runs:
            c = r[strategy]["curve"]
            ax_f1.plot(
                [p["labels"] for p in c],
                [p["weighted_f1"] for p in c],
                color=colour,
                alpha=0.25,
                lw=1,
            )
        mean = summary[strategy]["mean_curve"]
        xs = [p["labels"] for p in mean]
        ax_f1.plot(
            xs,
            [p["weighted_f1"] for p in mean],
            color=colour,
            lw=2.2,
            marker="o",
            ms=3,
            label=f"{strategy} (mean of {len(runs)})",
        )
        ax_cov.plot(
            xs,
            [p["auto_coverage"] for p in mean],
            color=colour,
            lw=2,
            marker="o",
            ms=3,
            label=f"{strategy}: auto coverage",
        )
    ref = summary["reference_weighted_f1"]
    ax_f1.axhline(ref, color="black", lw=1.2, label=f"all-labels model {ref:.3f}")
    ax_f1.axhspan(ref - TOLERANCE, ref, color="green", alpha=0.12, label="within 0.01")
    for ax in (ax_f1, ax_cov):
        ax.axvline(
            summary["half_stream_labels"], color="grey", ls="--", lw=1, label="half the stream"
        )
        ax.set_xlabel("labels spent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ax_f1.set_ylabel("weighted F1 on the held-out test part")
    ax_f1.set_title("F1 vs labels")
    ax_cov.set_ylabel("share of test items accepted automatically")
    ax_cov.set_title("automatic coverage vs labels")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help="the shared Made With ML CSV (title, description, tag)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default loadtests/results/simulate_loop[_quick].json)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, K=50: about 2 minutes")
    parser.add_argument("--k", type=int, default=None, help="labels per round (25; quick 50)")
    parser.add_argument(
        "--chunk", type=int, default=None, help="arrivals per round (200; quick 400)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="(0 1 2; quick 0)")
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument(
        "--pool",
        choices=("review", "all"),
        default="review",
        help="what the reviewer may label: `review` items (the service; default) "
        "or every arrived item, auto-accepted ones too (an audit budget)",
    )
    parser.add_argument("--max-labels", type=int, default=None, help="stop a loop at this many")
    parser.add_argument(
        "--audit-share",
        type=float,
        default=Settings.model_fields["audit_share"].default,
        help="share of all items in the audit sample, accepted or not (the service's "
        "TAGFLOW_AUDIT_SHARE; default: its default)",
    )
    parser.add_argument(
        "--encoder", type=EncoderKind, default=Settings.model_fields["encoder"].default
    )
    parser.add_argument(
        "--encoder-dir",
        type=Path,
        default=HERE / "results" / "encoder",
        help="where the ONNX export is kept between runs",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    plan = Plan.make(args)
    name = "simulate_loop" + ("_all" if args.pool == "all" else "") + ("_quick" * args.quick)
    out = (args.out or HERE / "results" / f"{name}.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tags = load_tags(DEFAULT_TAGS_FILE)
    seed, _ = load_dataset(SEED_DATASET, tags=tags)
    shared, _ = load_dataset(args.dataset, tags=tags)
    encoder = load_encoder(args.encoder_dir, args.encoder, threads=2, cache_size=100_000)
    lab = Lab(encoder=encoder, seed=seed, shared=shared, plan=plan)
    encoder.encode([e.text for e in seed + shared])  # once; every later call hits the cache
    runs = [run_seed(lab, s) for s in plan.seeds]
    summary = summarise(runs)
    meta = {
        "dataset": str(args.dataset.resolve()),
        "seed_dataset": str(SEED_DATASET),
        "seed_items": len(seed),
        "shared_items": len(shared),
        "plan": asdict(plan),
        "train_config": asdict(FAST_CONFIG),
        "encoder": encoder.path.name,
        "seconds": round(time.perf_counter() - started, 1),
    }
    png = out.with_suffix(".png")
    plot(
        summary,
        runs,
        png,
        f"human-in-the-loop simulation: pool={plan.pool}, K={plan.k}, "
        f"{plan.chunk} arrivals per round, seeds {plan.seeds}",
    )
    document = {"meta": meta | {"png": str(png)}, "summary": summary, "runs": runs}
    out.write_text(json.dumps(document, indent=2) + "\n")
    brief = {
        s: {
            k: summary[s][k]
            for k in ("within", "per_seed_first", "goal_met", "goal_met_sustained", "f1_at_half")
        }
        for s in STRATEGIES
    }
    print(
        json.dumps(
            {
                "reference": summary["reference_weighted_f1"],
                "seed_only": summary["seed_only_weighted_f1"],
                "half_stream_labels": summary["half_stream_labels"],
                **brief,
                "seconds": meta["seconds"],
                "json": str(out),
                "png": str(png),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
