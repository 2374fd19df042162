"""tagflow's performance benchmark, against a naive reference measured in the same run.

    python loadtests/benchmark.py --dataset ../shared/data/madewithml/dataset.csv \\
        --out loadtests/results/bench.json [--quick]

1. trains and promotes a model with `tagflow train` in a fresh data directory (timed);
2. starts `tagflow serve` (time to a 200 from /readyz), drives POST /predict at concurrency 1
   and 8 with a `fresh` workload (texts never seen: no cache can help) and a `repeat` one (the
   dataset's texts, cache warm), and reads the API process's RSS afterwards;
3. does the same for the naive reference (`naive_server.py`: FastAPI + sentence-transformers
   on PyTorch + one logistic head, one item per request);
4. restarts tagflow once per lever with one setting changed (micro-batching off, cache off,
   fp32 encoder, ...) and measures it the same way;
5. times each stage of the scoring path in-process (`breakdown.py`);
6. prints one JSON document (also written to --out): every figure, the goals and pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_client import Item, RunStats, drive, fresh_payloads, repeat_payloads
from bench_goals import judge, lever_effects, ratios, training_effects
from bench_procs import (
    Server,
    child_env,
    cpu_seconds,
    free_port,
    loadavg,
    run_timed,
    start_server,
)

from service.config import DEFAULT_TAGS_FILE, EncoderKind
from service.ml.dataset import load_dataset
from service.ml.pipeline import base_split
from service.redis_server import EmbeddedRedis
from service.tags import load_tags

HERE = Path(__file__).resolve().parent
CLIENT_KEY = "bench-client-key"
METRICS_KEY = "bench-metrics-key"  # /metrics takes a metrics (or admin) key, not a client's
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_KEY}"}
CONCURRENCIES = (1, 8)
LEVERS: dict[str, dict[str, str]] = {
    "microbatch_off": {"TAGFLOW_MICROBATCH_MAX": "1"},
    "microbatch_wait_0": {"TAGFLOW_MICROBATCH_WAIT_MS": "0"},
    "cache_off": {"TAGFLOW_EMBEDDING_CACHE_SIZE": "0"},
    "encoder_fp32": {"TAGFLOW_ENCODER": EncoderKind.ONNX_FP32.value},
    "score_threads_1": {"TAGFLOW_SCORE_THREADS": "1"},
    "openblas_threads_1": {"OPENBLAS_NUM_THREADS": "1"},
    # Not a single lever: one item at a time on two ORT threads instead of two on one each.
    "encoder_threads_2": {"TAGFLOW_ENCODER_THREADS": "2", "TAGFLOW_SCORE_THREADS": "1"},
    "fast_path_off": {"TAGFLOW_FAST_PATH": "0"},
}
# Training measured again with each of these environments, in a separate data directory.
TRAIN_LEVERS: dict[str, dict[str, str]] = {"openblas_threads_1": {"OPENBLAS_NUM_THREADS": "1"}}


@dataclass(frozen=True)
class Plan:
    """How many requests each measured run sends."""

    requests: dict[int, int]
    warmup: int
    breakdown_repeats: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(requests={1: 40, 8: 160}, warmup=8, breakdown_repeats=5)
        return cls(requests={1: 300, 8: 1500}, warmup=50, breakdown_repeats=30)


@dataclass
class Bench:
    """Everything the steps share: paths, the base environment, the items to send."""

    dataset: Path
    workdir: Path
    log_dir: Path
    base_env: dict[str, str]
    items: list[Item]  # every dataset item: the `repeat` workload
    held_out: list[Item]  # the items `tagflow train` keeps out of training: `fresh`
    plan: Plan


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def prepare_encoder(bench: Bench) -> float:
    """Export MiniLM to ONNX (fp32 and int8) once, so no timed step includes the export."""
    code = (
        "import sys; from pathlib import Path; from service.config import EncoderKind; "
        "from service.ml.encoder import ensure_onnx; "
        "[ensure_onnx(Path(sys.argv[1]), k) for k in EncoderKind]"
    )
    done = run_timed(
        python_cmd("-c", code, bench.base_env["TAGFLOW_ENCODER_DIR"]),
        env=bench.base_env,
        cwd=bench.workdir,
        log_path=bench.log_dir / "export.log",
    )
    if done.returncode:
        raise SystemExit(f"encoder export failed; see {bench.log_dir / 'export.log'}")
    return done.seconds


def train(
    bench: Bench, name: str = "train", overrides: dict[str, str] | None = None
) -> dict[str, Any]:
    """`tagflow train --promote` on the dataset, wall-clock timed as a user would see it.

    With `overrides`, it trains in a data directory of its own, leaving the main registry alone.
    """
    env = bench.base_env
    if overrides:
        data_dir = bench.workdir / f"data-{name}"
        data_dir.mkdir()
        env = env | overrides | {"TAGFLOW_DATA_DIR": str(data_dir)}
    log_path = bench.log_dir / f"{name}.log"
    done = run_timed(
        python_cmd("-m", "service.cli", "train", "--data", str(bench.dataset), "--promote"),
        env=env,
        cwd=bench.workdir,
        log_path=log_path,
    )
    if done.returncode:
        raise SystemExit(f"training failed; see {log_path}")
    fit = re.search(r"trained in ([\d.]+)s", done.output)
    return {
        "wall_s": done.seconds,
        "fit_and_evaluate_s": float(fit.group(1)) if fit else None,
        "items": len(bench.items),
    }


async def measured(
    server: Server,
    payloads: Any,
    *,
    concurrency: int,
    total: int,
    warmup: int,
    headers: dict[str, str],
) -> RunStats:
    """One closed-loop run, with the server's CPU time per request and, for tagflow, where the
    scoring part of it went (warm-up requests included in both)."""
    scoring_before = server.scoring_totals(METRICS_HEADERS)
    before = cpu_seconds(server.process.pid)
    stats = await drive(
        server.url, payloads, total=total, concurrency=concurrency, warmup=warmup, headers=headers
    )
    used = cpu_seconds(server.process.pid) - before
    requests = max(total + warmup, 1)
    stats.server_cpu_ms_per_request = round(used * 1000.0 / requests, 3)
    scoring_after = server.scoring_totals(METRICS_HEADERS)
    if scoring_before and scoring_after:
        stats.scoring = scoring_split(scoring_before, scoring_after, requests)
    return stats


def scoring_split(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """The share of items the encoder had to see, and the CPU of triage and encoding."""
    delta = {k: after[k] - before[k] for k in after}
    encoded = delta["encoded"]
    return {
        "encoded_share": round(encoded / max(delta["items"], 1), 3),
        "triage_cpu_ms_per_request": round(delta["triage_cpu_s"] * 1000.0 / requests, 3),
        "encode_cpu_ms_per_request": round(delta["encode_cpu_s"] * 1000.0 / requests, 3),
        "encode_cpu_ms_per_encoded_item": round(
            delta["encode_cpu_s"] * 1000.0 / max(encoded, 1), 3
        ),
    }


async def workloads(
    server: Server, bench: Bench, *, headers: dict[str, str], has_cache: bool
) -> dict[str, dict[str, Any]]:
    """`fresh` then `repeat`, each at every concurrency."""
    counter = itertools.count()
    results: dict[str, dict[str, Any]] = {"fresh": {}, "repeat": {}}
    for c in CONCURRENCIES:
        stats = await measured(
            server,
            fresh_payloads(bench.held_out, counter),
            concurrency=c,
            total=bench.plan.requests[c],
            warmup=bench.plan.warmup,
            headers=headers,
        )
        results["fresh"][f"c{c}"] = stats.to_dict()
        scoring = (
            f", {stats.scoring['encoded_share']:.0%} encoded at "
            f"{stats.scoring['encode_cpu_ms_per_encoded_item']} ms of CPU each"
            if stats.scoring
            else ""
        )
        say(
            f"{server.name} fresh c{c}: {stats.rps} req/s, p50 {stats.p50_ms} ms, "
            f"p99 {stats.p99_ms} ms, {stats.errors} errors, "
            f"{stats.server_cpu_ms_per_request} ms of server CPU per request{scoring}"
        )
    if has_cache:  # one pass over the dataset, so every `repeat` text is cached
        await drive(
            server.url,
            repeat_payloads(bench.items),
            total=len(bench.items),
            concurrency=8,
            headers=headers,
        )
    for c in CONCURRENCIES:
        stats = await measured(
            server,
            repeat_payloads(bench.items),
            concurrency=c,
            total=bench.plan.requests[c],
            warmup=bench.plan.warmup,
            headers=headers,
        )
        results["repeat"][f"c{c}"] = stats.to_dict()
        say(
            f"{server.name} repeat c{c}: {stats.rps} req/s, p50 {stats.p50_ms} ms, "
            f"p99 {stats.p99_ms} ms, {stats.errors} errors"
        )
    return results


def run_server(
    bench: Bench,
    name: str,
    cmd: list[str],
    *,
    env: dict[str, str],
    port: int,
    headers: dict[str, str],
    has_cache: bool,
) -> dict[str, Any]:
    """Start a server, time its readiness, load it, read its memory, stop it."""
    say(f"starting {name}")
    server = start_server(name, cmd, env=env, port=port, cwd=bench.workdir, log_dir=bench.log_dir)
    try:
        ready_s = server.wait_ready()
        say(f"{name} ready after {ready_s}s")
        memory_ready = server.memory()
        load_before = loadavg()
        results = asyncio.run(workloads(server, bench, headers=headers, has_cache=has_cache))
        return {
            "ready_s": ready_s,
            "memory_at_ready": memory_ready,
            "memory": server.memory(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "results": results,
        }
    finally:
        server.stop()


def run_tagflow(bench: Bench, name: str, overrides: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    out = run_server(
        bench,
        name,
        python_cmd("-m", "service.cli", "serve", "--port", str(port)),
        env=bench.base_env | overrides,
        port=port,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        has_cache=overrides.get("TAGFLOW_EMBEDDING_CACHE_SIZE") != "0",
    )
    return {"env": overrides, **out}


def run_naive(bench: Bench) -> dict[str, Any]:
    port = free_port()
    cmd = python_cmd(
        str(HERE / "naive_server.py"), "--dataset", str(bench.dataset), "--port", str(port)
    )
    return run_server(
        bench, "naive", cmd, env=bench.base_env, port=port, headers={}, has_cache=False
    )


def run_breakdown(bench: Bench, quick: bool) -> dict[str, Any] | None:
    args = ["--dataset", str(bench.dataset), "--repeats", str(bench.plan.breakdown_repeats)]
    done = run_timed(
        python_cmd(str(HERE / "breakdown.py"), *args, *([] if quick else ["--accuracy"])),
        env=bench.base_env,
        cwd=bench.workdir,
        log_path=bench.log_dir / "breakdown.log",
    )
    if done.returncode:
        say(f"breakdown failed (see {bench.log_dir / 'breakdown.log'}); reported as null")
        return None
    return json.loads(done.output.strip().splitlines()[-1])


def start_redis(workdir: Path) -> tuple[str, Any]:
    """The local Redis if TAGFLOW_REDIS_URL is set, else an embedded one in `workdir`."""
    if os.environ.get("TAGFLOW_REDIS_URL"):
        return os.environ["TAGFLOW_REDIS_URL"], None
    embedded = EmbeddedRedis(workdir / "redis")
    return embedded.start(), embedded


def git_revision() -> str:
    """The commit under test, with `+dirty` when the work tree has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="CSV with title, description, tag (the shared Made With ML set)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench.json")
    parser.add_argument("--quick", action="store_true", help="short smoke run, few requests")
    parser.add_argument(
        "--encoder-dir",
        type=Path,
        default=HERE / "results" / "encoder",
        help="where the ONNX export is kept between runs",
    )
    parser.add_argument(
        "--levers",
        nargs="*",
        choices=sorted(LEVERS),
        default=sorted(LEVERS),
        help="levers to measure (default: all; none: skip)",
    )
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    return parser.parse_args()


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """All steps, in order; returns the report."""
    report: dict[str, Any] = {}
    say("exporting the encoder (skipped when already there)")
    export_s = prepare_encoder(bench)
    say("training")
    report["training"] = {**train(bench), "encoder_export_s": export_s}
    say(f"trained in {report['training']['wall_s']}s")
    report["training_levers"] = (
        {}
        if args.quick
        else {
            name: {"env": env, **train(bench, f"train-{name}", env)}
            for name, env in TRAIN_LEVERS.items()
        }
    )
    report["tagflow"] = run_tagflow(bench, "tagflow", {})
    report["naive"] = None if args.skip_naive else run_naive(bench)
    report["levers"] = {
        name: run_tagflow(bench, f"tagflow-{name}", LEVERS[name]) for name in args.levers
    }
    say("in-process stage timings")
    report["breakdown"] = run_breakdown(bench, args.quick)
    return report


def make_bench(dataset: Path, *, out: Path, encoder_dir: Path, plan: Plan) -> tuple[Bench, Any]:
    """The shared set-up: items, a temporary data directory, Redis, the servers' environment.
    Returns the bench and the embedded Redis to stop (None when TAGFLOW_REDIS_URL is used)."""
    dataset = dataset.resolve()
    tags = load_tags(DEFAULT_TAGS_FILE)
    examples, _ = load_dataset(dataset, tags=tags)
    items = [Item(e.title, e.description) for e in examples]
    # Fresh traffic is what the trained model never saw: its own held-out split. Training
    # texts would flatter the TF-IDF fast path, which is surer of what it was fitted on.
    _, held_out_examples, _ = base_split(dataset, tags=tags)
    held_out = [Item(e.title, e.description) for e in held_out_examples]
    workdir = Path(tempfile.mkdtemp(prefix="tagflow-bench-"))
    (workdir / "data").mkdir()  # `tagflow train` does not create the data directory itself
    log_dir = out.resolve().parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    encoder_dir.mkdir(parents=True, exist_ok=True)
    redis_url, embedded = start_redis(workdir)
    env = child_env(
        {
            "TAGFLOW_DATA_DIR": str(workdir / "data"),
            "TAGFLOW_ENCODER_DIR": str(encoder_dir.resolve()),
            "TAGFLOW_API_KEYS": f"client:{CLIENT_KEY},metrics:{METRICS_KEY},admin:bench-admin-key",
            "TAGFLOW_REDIS_URL": redis_url,
        }
    )
    bench = Bench(
        dataset=dataset,
        workdir=workdir,
        log_dir=log_dir,
        base_env=env,
        items=items,
        held_out=held_out,
        plan=plan,
    )
    return bench, embedded


def main() -> None:
    args = parse_args()
    plan = Plan.make(args.quick)
    out = args.out.resolve()
    bench, embedded = make_bench(args.dataset, out=out, encoder_dir=args.encoder_dir, plan=plan)
    meta = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "dataset": str(bench.dataset),
        "items": len(bench.items),
        "fresh_items": len(bench.held_out),
        "requests_per_run": plan.requests,
        "warmup_per_run": plan.warmup,
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "redis": "embedded" if embedded else bench.base_env["TAGFLOW_REDIS_URL"],
        "loadavg_start": loadavg(),
        "logs": str(bench.log_dir),
        "git": git_revision(),
    }
    try:
        report = run(args, bench)
    finally:
        if embedded is not None:
            embedded.stop()
        if not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    meta["loadavg_end"] = loadavg()
    document = {
        "meta": meta,
        **report,
        "ratios": ratios(report),
        "lever_effects": lever_effects(report),
        "training_effects": training_effects(report),
        "goals": judge(report),
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    passed = sum(g["pass"] is True for g in document["goals"])
    say(f"{passed}/{len(document['goals'])} goals met; written to {out}")


if __name__ == "__main__":
    main()
