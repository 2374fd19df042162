"""Single-request latency while 256-item batches are in flight, against a running tagflow.

    python loadtests/mixed_load.py --url http://127.0.0.1:8000 --key client-... \\
        --dataset ../shared/data/madewithml/dataset.csv

One client sends 256-item `/predict/batch` calls back to back; another sends `--singles`
single items 10 ms apart. Every text is unique (no cache hits). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import time

import httpx


async def send_batches(
    client: httpx.AsyncClient, rows: list[dict], stop: asyncio.Event, latencies: list[float]
) -> None:
    n = 0
    while not stop.is_set():
        start = (n * 256) % max(1, len(rows) - 256)
        items = [
            {"title": f"{r['title']} b{n}-{j}", "description": r["description"]}
            for j, r in enumerate(rows[start : start + 256])
        ]
        began = time.perf_counter()
        response = await client.post("/predict/batch", json={"items": items})
        response.raise_for_status()
        latencies.append((time.perf_counter() - began) * 1000)
        n += 1


async def send_singles(
    client: httpx.AsyncClient, rows: list[dict], count: int, latencies: list[float]
) -> None:
    for k in range(count):
        row = rows[(k * 7) % len(rows)]
        began = time.perf_counter()
        response = await client.post(
            "/predict", json={"title": f"{row['title']} s{k}", "description": row["description"]}
        )
        response.raise_for_status()
        latencies.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(0.01)


async def run(args: argparse.Namespace) -> dict[str, float]:
    with open(args.dataset, newline="") as fh:
        rows = list(csv.DictReader(fh))
    headers = {"Authorization": f"Bearer {args.key}"}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=120) as client:
        stop = asyncio.Event()
        batch_ms: list[float] = []
        single_ms: list[float] = []
        batches = asyncio.create_task(send_batches(client, rows, stop, batch_ms))
        await asyncio.sleep(0.5)  # the first batch is in flight
        await send_singles(client, rows, args.singles, single_ms)
        stop.set()
        await batches
    q = statistics.quantiles(single_ms, n=100)
    return {
        "single_p50_ms": round(q[49], 1),
        "single_p90_ms": round(q[89], 1),
        "single_p99_ms": round(q[98], 1),
        "batch_median_ms": round(statistics.median(batch_ms), 1),
        "batches": len(batch_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="a client key")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--singles", type=int, default=200)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
