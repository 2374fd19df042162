"""Server variants compared in alternation: on a 2-core machine whose speed drifts by a third
within the hour, one run per variant says little; rounds of every variant in turn, on one
trained model, let each round compare variants measured minutes apart.

    python loadtests/ab_servers.py --dataset ../shared/data/madewithml/dataset.csv \\
        --variant flush_2s TAGFLOW_LOG_FLUSH_INTERVAL_S=2 --rounds 3 --out /tmp/ab.json

The first variant is always `default` (no override). Each round drives every variant with the
benchmark's workloads (fresh and repeat texts, c=1 and c=8) and prints its fresh figures;
the JSON document holds every round and, per variant, the median and range.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmark import HERE, Bench, Plan, make_bench, run_tagflow, say, train

FIGURES = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
T = TypeVar("T")


def add_variant_argument(parser: argparse.ArgumentParser) -> None:
    """`--variant NAME KEY=VALUE ...`, repeatable (read by `variants`)."""
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="a variant: its name, then the environment it overrides (repeatable)",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    add_variant_argument(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ab.json")
    parser.add_argument("--encoder-dir", type=Path, default=HERE / "results" / "encoder")
    return parser.parse_args()


def variants(specs: list[list[str]]) -> dict[str, dict[str, str]]:
    """`default` first, then each `NAME KEY=VALUE ...` given."""
    found: dict[str, dict[str, str]] = {"default": {}}
    for name, *pairs in specs:
        if name in found or not all("=" in pair for pair in pairs):
            sys.exit(f"variant {name!r}: a new name, then KEY=VALUE pairs")
        found[name] = dict(pair.split("=", 1) for pair in pairs)
    return found


def fresh(result: dict[str, Any]) -> dict[str, float]:
    """The fresh-text figures of one server run: c=8 throughput and latency, c=1 p50."""
    c8, c1 = result["results"]["fresh"]["c8"], result["results"]["fresh"]["c1"]
    return {**{f"c8_{k}": c8[k] for k in FIGURES}, "c1_p50_ms": c1["p50_ms"]}


def summary(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        key: {
            "median": round(statistics.median(r[key] for r in rounds), 3),
            "min": min(r[key] for r in rounds),
            "max": max(r[key] for r in rounds),
        }
        for key in rounds[0]
    }


def alternate(
    args: argparse.Namespace,
    chosen: dict[str, dict[str, str]],
    measure: Callable[[Bench, str, dict[str, str]], T],
    brief: Callable[[T], object],
) -> dict[str, list[T]]:
    """Train once, then `args.rounds` rounds of every variant in turn on that model (each
    round's figures logged as `brief` gives them); the work directory and any embedded Redis
    are cleaned up after."""
    bench, embedded = make_bench(
        args.dataset, out=args.out, encoder_dir=args.encoder_dir, plan=Plan.make(quick=False)
    )
    measured: dict[str, list[T]] = {name: [] for name in chosen}
    try:
        train(bench)
        for number in range(1, args.rounds + 1):
            for name, env in chosen.items():
                measured[name].append(measure(bench, name, env))
                say(f"round {number} {name}: {brief(measured[name][-1])}")
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(bench.workdir, ignore_errors=True)
    return measured


def main() -> None:
    args = parse_args()
    chosen = variants(args.variant)
    measured = alternate(
        args, chosen, lambda bench, name, env: fresh(run_tagflow(bench, name, env)), str
    )
    document = {
        "variants": chosen,
        "rounds": measured,
        "summary": {name: summary(rounds) for name, rounds in measured.items()},
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["summary"], indent=2))


if __name__ == "__main__":
    main()
