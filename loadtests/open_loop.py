"""Latency under open-loop traffic: requests arriving at a fixed mean rate, as independent
upstream callers send them, for server variants in alternating rounds on one trained model.

    python loadtests/open_loop.py --dataset ../shared/data/madewithml/dataset.csv \\
        --variant no_window TAGFLOW_MICROBATCH_WAIT_MS=0 --rates 50 150 300 --rounds 3

The benchmark's closed loop (N clients, each sending on its answer) measures capacity; here
arrivals do not wait for answers (a Poisson process, `bench_client.drive_open`), which is
how a service sees traffic below its capacity. Fresh texts only (the held-out split, each
made unique). Variants as in `ab_servers.py`: `default` first, then `NAME KEY=VALUE ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from ab_servers import add_variant_argument, alternate, variants
from bench_client import drive, drive_open, fresh_payloads
from bench_procs import free_port, start_server
from benchmark import CLIENT_KEY, HERE, Bench, python_cmd, say

FIGURES = ("rps", "p50_ms", "p90_ms", "p99_ms", "errors")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    add_variant_argument(parser)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 150.0, 300.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of arrivals per rate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "open_loop.json")
    parser.add_argument("--encoder-dir", type=Path, default=HERE / "results" / "encoder")
    return parser.parse_args()


async def load(url: str, bench: Bench, rates: list[float], seconds: float) -> dict[str, Any]:
    """A closed-loop warm-up, then each rate in turn; the figures of each rate."""
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    counter = itertools.count()
    payloads = fresh_payloads(bench.held_out, counter)
    await drive(url, payloads, total=200, concurrency=4, headers=headers)
    figures: dict[str, Any] = {}
    for number, rate in enumerate(rates):
        total = max(1, round(rate * seconds))
        stats = await drive_open(
            url, payloads, rate=rate, total=total, seed=number, headers=headers
        )
        figures[f"{rate:g}"] = {k: getattr(stats, k) for k in FIGURES} | {
            "peak_in_flight": stats.concurrency
        }
        if stats.errors:
            say(f"{rate:g}/s: {stats.errors} failed, e.g. {stats.error_samples[:2]}")
    return figures


def run_variant(bench: Bench, name: str, env: dict[str, str], args: argparse.Namespace) -> Any:
    port = free_port()
    cmd = python_cmd("-m", "service.cli", "serve", "--port", str(port))
    server = start_server(
        name, cmd, env=bench.base_env | env, port=port, cwd=bench.workdir, log_dir=bench.log_dir
    )
    try:
        server.wait_ready()
        return asyncio.run(load(server.url, bench, args.rates, args.seconds))
    finally:
        server.stop()


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rate and figure: median, min and max over the rounds."""
    return {
        rate: {
            key: {
                "median": round(statistics.median(r[rate][key] for r in rounds), 2),
                "min": min(r[rate][key] for r in rounds),
                "max": max(r[rate][key] for r in rounds),
            }
            for key in rounds[0][rate]
        }
        for rate in rounds[0]
    }


def brief(figures: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Requests per second, p50 and p99 by rate: one round's log line."""
    return {r: (f["rps"], f["p50_ms"], f["p99_ms"]) for r, f in figures.items()}


def main() -> None:
    args = parse_args()
    chosen = variants(args.variant)
    measured = alternate(
        args, chosen, lambda bench, name, env: run_variant(bench, name, env, args), brief
    )
    document = {
        "variants": chosen,
        "rates": args.rates,
        "seconds": args.seconds,
        "rounds": measured,
        "summary": {name: summary(rounds) for name, rounds in measured.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["summary"], indent=2))


if __name__ == "__main__":
    main()
