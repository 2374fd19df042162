"""How fast the RQ worker turns review work into queue tasks, in-process, on real parts.

    python loadtests/worker_throughput.py --dataset ../shared/data/madewithml/dataset.csv \\
        [--items 1000] [--rounds 2]

Each round writes `--items` review predictions (dataset texts with a unique suffix, so every
one is new content) through the outbox as the API does (`save_predictions`, then `relay`
until empty), then runs a `SimpleWorker`, as `tagflow worker` does, in burst mode until the
labelling queue is empty. Later rounds start with the earlier rounds' tasks open. Prints one
JSON line per round: items per second (wall) and the worker's CPU per item, and the API-side
CPU per row of the relay.

SQLite in a temporary directory; Redis from TAGFLOW_REDIS_URL (its database is emptied) or an
embedded one; the ONNX encoder from `--encoder-dir` (exported there on first use).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue, SimpleWorker
from sqlmodel import Session

from service.config import Settings
from service.crud.predictions import save_predictions
from service.entities import PredictionCreate, PredictionStatus
from service.entities.common import new_id
from service.ml.dataset import text_hash
from service.outbox import LABELING_QUEUE, relay
from service.redis_server import EmbeddedRedis
from workers.context import JobContext, use_context

HERE = Path(__file__).resolve().parent
UNSURE = {"natural-language-processing": 0.4, "computer-vision": 0.35, "mlops": 0.15}


def review_predictions(rows: list[dict[str, str]], start: int, n: int) -> list[PredictionCreate]:
    """`n` unsure predictions of dataset texts, each made new content by its number."""
    out = []
    for k in range(start, start + n):
        row = rows[k % len(rows)]
        title, description = row["title"], f"{row['description']} (item {k})"
        out.append(
            PredictionCreate(
                id=new_id(),
                text_hash=text_hash(title, description),
                title=title,
                description=description,
                tag="natural-language-processing",
                confidence=0.4,
                scores=UNSURE | {"other": 0.1},
                status=PredictionStatus.REVIEW,
                model_version="bench",
                latency_ms=1.0,
            )
        )
    return out


def run_round(ctx: JobContext, queue: Queue, predictions: list[PredictionCreate]) -> dict:
    with Session(ctx.engine) as session:
        save_predictions(session, predictions=predictions)
        cpu = time.process_time()
        while relay(session, queue=queue):
            pass
        relay_cpu = time.process_time() - cpu
    jobs = queue.count
    cpu, wall = time.process_time(), time.perf_counter()
    SimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(predictions)
    return {
        "items": n,
        "jobs": jobs,
        "seconds": round(wall, 2),
        "items_per_s": round(n / wall, 1),
        "worker_cpu_ms_per_item": round(cpu * 1000 / n, 2),
        "relay_cpu_us_per_row": round(relay_cpu * 1e6 / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--encoder-dir", type=Path, default=HERE / "results" / "encoder")
    args = parser.parse_args()
    with args.dataset.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    workdir = Path(tempfile.mkdtemp(prefix="tagflow-worker-"))
    embedded = None
    url = os.environ.get("TAGFLOW_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(workdir / "redis")
        url = embedded.start()
    try:
        settings = Settings(
            dev=True,
            data_dir=workdir,
            redis_url=url,
            encoder_dir=args.encoder_dir.resolve(),
            audit_share=0.0,
            review_suspects=False,
            retrain_after_labels=0,
        )
        conn = redis.Redis.from_url(url)
        conn.flushdb()
        ctx = JobContext(settings)
        use_context(ctx)
        ctx.encoder.encode(["warm up"])  # the model loads before the clock starts
        queue = Queue(LABELING_QUEUE, connection=conn)
        for r in range(args.rounds):
            result = run_round(ctx, queue, review_predictions(rows, r * args.items, args.items))
            print(json.dumps({"round": r, **result}), flush=True)
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
