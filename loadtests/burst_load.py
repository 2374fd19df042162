"""A burst beyond capacity, against a running tagflow: what admission control does.

    python loadtests/burst_load.py --url http://127.0.0.1:8000 --key client-... \\
        --dataset ../shared/data/madewithml/dataset.csv [--clients 8 --seconds 15]

`--clients` clients send 256-item `/predict/batch` calls back to back; a refused one (503)
sleeps its `Retry-After` and tries the next batch. One more client sends single items back to
back. Every text is unique (no cache hits). Prints one JSON line: batches scored and refused,
the scored batches' latency, the singles' status codes and latency. Run it once with the
server's default `TAGFLOW_MAX_WAITING_ITEMS` and once with `0` (no bound) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import time

import httpx

BATCH = 256


def quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


class Burst:
    """Shared state of one run: the texts, a counter that makes each one unique, the results."""

    def __init__(self, rows: list[dict], seconds: float) -> None:
        self.rows = rows
        self.serial = itertools.count()
        self.deadline = time.monotonic() + seconds
        self.batch_s: list[float] = []
        self.refused = 0
        self.single_ms: list[float] = []
        self.single_codes: dict[int, int] = {}

    def item(self) -> dict[str, str]:
        n = next(self.serial)
        row = self.rows[n % len(self.rows)]
        return {"title": f"{row['title']} #{n}", "description": row["description"]}

    def running(self) -> bool:
        return time.monotonic() < self.deadline


async def send_batches(client: httpx.AsyncClient, burst: Burst) -> None:
    while burst.running():
        body = {"items": [burst.item() for _ in range(BATCH)]}
        began = time.perf_counter()
        response = await client.post("/predict/batch", json=body)
        if response.status_code == 503:
            burst.refused += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        response.raise_for_status()
        burst.batch_s.append(time.perf_counter() - began)


async def send_singles(client: httpx.AsyncClient, burst: Burst) -> None:
    while burst.running():
        began = time.perf_counter()
        response = await client.post("/predict", json=burst.item())
        code = response.status_code
        burst.single_codes[code] = burst.single_codes.get(code, 0) + 1
        if code == 200:
            burst.single_ms.append((time.perf_counter() - began) * 1000)


async def run(args: argparse.Namespace) -> dict[str, object]:
    with open(args.dataset, newline="") as fh:
        burst = Burst(list(csv.DictReader(fh)), args.seconds)
    headers = {"Authorization": f"Bearer {args.key}"}
    limits = httpx.Limits(max_connections=args.clients + 1)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=300, limits=limits
    ) as client:
        await asyncio.gather(
            *(send_batches(client, burst) for _ in range(args.clients)),
            send_singles(client, burst),
        )
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "batches_scored": len(burst.batch_s),
        "batches_refused": burst.refused,
        "batch_p50_s": quantile(burst.batch_s, 0.5),
        "batch_max_s": quantile(burst.batch_s, 1.0),
        "singles": burst.single_codes,
        "single_p50_ms": quantile(burst.single_ms, 0.5),
        "single_p99_ms": quantile(burst.single_ms, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="a client key")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--clients", type=int, default=8, help="batch clients")
    parser.add_argument("--seconds", type=float, default=15.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
