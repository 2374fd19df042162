"""/predict latency while the worker on the same machine retrains, against the worker idle.

    python loadtests/coexist.py --url http://127.0.0.1:8630 --client-key K --admin-key A \\
        --dataset ../shared/data/madewithml/dataset.csv [--rate 100 | --concurrency 4] \\
        [--variant niced TAGFLOW_WORKER_NICE=10 ...] [--rounds 2] [--idle-s 15]

`tagflow up` runs the API and one worker on the same cores; the benchmark measures /predict
alone. Here the API is already running (any `tagflow serve` with those keys); this script
starts the worker itself, `python -m service.cli worker` with the calling shell's TAGFLOW_*
plus a variant's overrides (`default` first, then each `--variant NAME KEY=VALUE ...`), so
variants alternate within every round and see the same noise from other work on the machine.
Per worker started: /predict for `--idle-s` with no retraining (`idle`: the worker still
labels the review items the traffic makes, as it would in production), then a forced
retraining (POST /models/retrain?force=true) with /predict measured until its job ends, twice:
`cold`, in a fresh worker, encodes every training text; `warm` finds them in its embedding
cache. Each phase starts once the labelling queue is empty. The load is an open loop of
Poisson arrivals at `--rate` per second (or, with `--concurrency N`, a closed loop of N
clients), fresh texts only (dataset items made unique), latency from the scheduled arrival as
in `bench_client.drive_open`. With `--api-pid`, each phase also reports how long the API's
threads waited for a core per request (/proc schedstat run_delay): the contention itself,
less noisy than a p99.

Prints one JSON line per phase (variant, round, phase, p50/p90/p99/max, req/s, errors, the
job's seconds and time queued, the labelling backlog at its end, load average) and medians per
variant and phase at the end. Run with PYTHONPATH at the repository, the API with
TAGFLOW_SHADOW=false and TAGFLOW_AUTO_PROMOTE=false in the environment (the worker inherits
it), or the candidates each retraining registers change what /predict does from one phase to
the next.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from bench_client import IDLE_REUSE_S, Connection, Item, exchange, fresh_payloads, summarise
from redis import Redis

from service.outbox import LABELING_QUEUE

FIGURES = ("requests", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors")
ROOT = Path(__file__).resolve().parent.parent
PHASES = ("idle", "cold", "warm")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-key", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="open loop, requests/s")
    parser.add_argument("--concurrency", type=int, default=0, help="closed loop instead")
    parser.add_argument("--idle-s", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES), help="per worker, in order"
    )
    parser.add_argument("--api-pid", type=int, help="to read the API's wait for a core")
    parser.add_argument("--max-job-s", type=float, default=300.0, help="load stops after it")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="worker environment overrides, measured against the default in alternation",
    )
    return parser.parse_args()


def read_items(path: Path) -> list[Item]:
    with path.open(newline="", encoding="utf-8") as f:
        return [Item(row["title"], row["description"]) for row in csv.DictReader(f)]


async def load_until(
    args: argparse.Namespace, payloads: Any, stop: asyncio.Event, seed: int
) -> dict[str, Any]:
    """/predict under the chosen load until `stop` is set; the figures of what it measured."""
    headers = {"Authorization": f"Bearer {args.client_key}"}
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0

    async def send(conn: Connection, since: float) -> None:
        nonlocal errors
        failure = await exchange(conn, "/predict", json.dumps(payloads()).encode(), 30.0)
        if failure is None:
            latencies.append(time.perf_counter() - since)
        else:
            errors += 1
            samples.append(failure)

    async def client(conn: Connection) -> None:
        while not stop.is_set():
            await send(conn, time.perf_counter())

    cpu_before, started = time.process_time(), time.perf_counter()
    if args.concurrency:
        conns = [Connection(args.url, headers) for _ in range(args.concurrency)]
        await asyncio.gather(*(client(c) for c in conns))
    else:
        rng = np.random.default_rng(seed)
        idle: list[tuple[Connection, float]] = []  # with when each was last used
        tasks: list[asyncio.Task[None]] = []
        conns = []

        async def one(arrival: float) -> None:
            conn = Connection(args.url, headers)
            if idle:
                reused, used_at = idle.pop()
                if time.perf_counter() - used_at < IDLE_REUSE_S:
                    conn = reused
                else:  # uvicorn closes a connection idle for 5 s
                    await reused.close()
            conns.append(conn)
            await send(conn, arrival)
            idle.append((conn, time.perf_counter()))

        arrival = started
        while not stop.is_set():
            arrival += float(rng.exponential(1.0 / args.rate))
            if (delay := arrival - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(arrival)))
        await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    for conn in set(conns):
        await conn.close()
    stats = summarise(
        latencies,
        concurrency=args.concurrency,
        errors=errors,
        seconds=seconds,
        samples=samples,
        client_cpu_s=time.process_time() - cpu_before,
    )
    return {k: getattr(stats, k) for k in FIGURES} | {"error_samples": stats.error_samples}


def api(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    """One admin call to the API (urllib: off the event loop, in a thread)."""
    request = urllib.request.Request(
        args.url + path, method=method, headers={"Authorization": f"Bearer {args.admin_key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def retraining(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    """Queue a forced retraining, wait for its job to end, then stop the load."""
    started = time.perf_counter()
    job = await asyncio.to_thread(api, args, "POST", "/models/retrain?force=true")
    queued_s = None
    while True:
        await asyncio.sleep(0.2)
        state = await asyncio.to_thread(api, args, "GET", f"/jobs/{job['job_id']}")
        if queued_s is None and state["status"] != "queued":
            queued_s = round(time.perf_counter() - started, 2)
        if state["status"] in ("finished", "failed"):
            break
        if time.perf_counter() - started > args.max_job_s:  # left to finish in the worker
            break
    stop.set()
    result = state.get("result") or {}
    return {
        "job_s": round(time.perf_counter() - started, 2),
        "queued_s": queued_s,
        "job_status": state["status"],
        "candidate": result.get("candidate") if isinstance(result, dict) else None,
        "job_error": (state.get("error") or "")[-300:] or None,
    }


def labeling_backlog() -> int:
    """Labelling jobs waiting in the queue (the worker takes them before a retraining)."""
    return int(Redis.from_url(os.environ["TAGFLOW_REDIS_URL"]).llen(f"rq:queue:{LABELING_QUEUE}"))


def cpu_wait_s(pid: int | None) -> float:
    """Seconds the threads of process `pid` have spent runnable but waiting for a core
    (/proc schedstat run_delay, summed over its threads alive now); 0 without a pid."""
    if pid is None:
        return 0.0
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return total / 1e9


async def phase(args: argparse.Namespace, payloads: Any, *, retrain: bool, seed: int) -> dict:
    for _ in range(120):  # each phase starts with the worker's labelling work done
        if labeling_backlog() == 0:
            break
        await asyncio.sleep(0.5)
    stop = asyncio.Event()
    load_before = os.getloadavg()[0]
    waited_before = cpu_wait_s(args.api_pid)
    if retrain:
        figures, job = await asyncio.gather(
            load_until(args, payloads, stop, seed), retraining(args, stop)
        )
    else:
        asyncio.get_running_loop().call_later(args.idle_s, stop.set)
        figures, job = await load_until(args, payloads, stop, seed), {}
    waited = cpu_wait_s(args.api_pid) - waited_before
    return (
        figures
        | job
        | {
            "api_cpu_wait_ms_per_request": round(waited * 1000 / max(1, figures["requests"]), 3),
            "loadavg": [load_before, os.getloadavg()[0]],
            "labeling_backlog": labeling_backlog(),
        }
    )


def start_worker(overrides: dict[str, str]) -> subprocess.Popen[bytes]:
    """`tagflow worker` with this shell's environment and `overrides`; returns once it has
    registered with RQ (it logs its queues)."""
    env = os.environ | overrides
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert worker.stderr is not None
    for line in worker.stderr:
        if b"Listening on" in line or b"*** Listening" in line:
            break
    else:
        raise SystemExit(f"the worker exited ({worker.wait()}) before listening")
    # Keep reading its log, so a full pipe never blocks it.
    threading.Thread(target=worker.stderr.read, daemon=True).start()
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def main() -> None:
    args = parse_args()
    variants = [("default", {})] + [
        (name, dict(kv.split("=", 1) for kv in pairs)) for name, *pairs in args.variant
    ]
    payloads = fresh_payloads(read_items(args.dataset), itertools.count())
    rows: list[dict[str, Any]] = []
    seed = itertools.count()
    for number in range(args.rounds):
        for name, overrides in variants:
            worker = start_worker(overrides)
            try:
                for label in args.phases:
                    retrain = label != "idle"
                    row = {"variant": name, "round": number, "phase": label}
                    row |= await phase(args, payloads, retrain=retrain, seed=next(seed))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                stop_worker(worker)
    summary: dict[str, Any] = {}
    for row in rows:
        at = summary.setdefault(f"{row['variant']}/{row['phase']}", {})
        for key in ("rps", "p50_ms", "p99_ms", "job_s"):
            if key in row:
                at.setdefault(key, []).append(row[key])
    for key, figures in summary.items():
        summary[key] = {k: [statistics.median(v), v] for k, v in figures.items()}
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
