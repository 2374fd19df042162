"""The load generator of the benchmark: a closed loop of N concurrent keep-alive clients.

Each of `concurrency` coroutines sends one request, waits for the answer, and sends the next,
over one shared `httpx.AsyncClient` whose pool holds exactly `concurrency` connections.
Latency is measured by the client, from just before sending to the full response body.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

Payload = dict[str, str]
PayloadFn = Callable[[], Payload]


@dataclass
class Item:
    """One dataset item as sent to POST /predict."""

    title: str
    description: str


@dataclass
class RunStats:
    """What one closed-loop run measured; latencies in milliseconds, successful requests only."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    client_cpu_ms_per_request: float
    server_cpu_ms_per_request: float | None = None
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fresh_payloads(items: list[Item], counter: itertools.count) -> PayloadFn:
    """Every call a text the server has never seen: a unique suffix defeats any cache.

    `counter` must be shared by every run against the same server process.
    """

    def make() -> Payload:
        n = next(counter)
        item = items[n % len(items)]
        return {"title": item.title, "description": f"{item.description} (item {n})"}

    return make


def repeat_payloads(items: list[Item]) -> PayloadFn:
    """The dataset's own texts, cycling: after one pass every text is a cache hit."""
    cycle = itertools.cycle(items)

    def make() -> Payload:
        item = next(cycle)
        return {"title": item.title, "description": item.description}

    return make


def summarise(latencies_s: list[float], *, concurrency: int, errors: int, seconds: float,
              samples: list[str], client_cpu_s: float) -> RunStats:
    """Percentiles and throughput of one run."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    pct = (lambda q: round(float(np.percentile(ms, q)), 2)) if ms.size else (lambda q: float("nan"))
    return RunStats(
        concurrency=concurrency, requests=int(ms.size), errors=errors,
        seconds=round(seconds, 3), rps=round(ms.size / seconds, 1) if seconds else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        max_ms=round(float(ms.max()), 2) if ms.size else float("nan"),
        mean_ms=round(float(ms.mean()), 2) if ms.size else float("nan"),
        client_cpu_ms_per_request=round(client_cpu_s * 1000.0 / max(ms.size + errors, 1), 3),
        error_samples=samples[:5],
    )


async def drive(
    base_url: str, payloads: PayloadFn, *, total: int, concurrency: int, warmup: int = 0,
    path: str = "/predict", headers: dict[str, str] | None = None, timeout_s: float = 30.0,
) -> RunStats:
    """Send `warmup` unmeasured then `total` measured requests, `concurrency` at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s,
                                 headers=headers or {}) as client:

        async def loop(budget: list[int], record: bool) -> None:
            nonlocal errors
            while budget[0] > 0:
                budget[0] -= 1
                body = payloads()
                start = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    failure = None if response.status_code == 200 else (
                        f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                if not record:
                    continue
                if failure is None:
                    latencies.append(elapsed)
                else:
                    errors += 1
                    samples.append(failure)

        if warmup:  # also opens every pooled connection before the measured part
            spare = [warmup]
            await asyncio.gather(*(loop(spare, False) for _ in range(concurrency)))
        budget = [total]
        cpu_before, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(loop(budget, True) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu_before
    return summarise(latencies, concurrency=concurrency, errors=errors, seconds=seconds,
                     samples=samples, client_cpu_s=client_cpu_s)
