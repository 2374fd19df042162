"""The load generator of the benchmark: a closed loop of N concurrent keep-alive clients.

Each of `concurrency` coroutines owns one keep-alive HTTP/1.1 connection, sends one request,
waits for the answer, and sends the next. Latency is measured by the client, from just before
sending to the full response body.

The client speaks just enough HTTP/1.1 for this (a POST with a JSON body; a response with
Content-Length, which uvicorn always sends for these endpoints) on asyncio streams, because it
shares the two cores with the server it measures: httpx cost about 1.1 ms of CPU per request
here, this client about a fifth of that (`client_cpu_ms_per_request` in every run).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
    # tagflow only: encoded share of items, triage and encoder CPU (benchmark.scoring_split)
    scoring: dict[str, float] | None = None
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


def summarise(
    latencies_s: list[float],
    *,
    concurrency: int,
    errors: int,
    seconds: float,
    samples: list[str],
    client_cpu_s: float,
) -> RunStats:
    """Percentiles and throughput of one run."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    pct = (lambda q: round(float(np.percentile(ms, q)), 2)) if ms.size else (lambda q: float("nan"))
    return RunStats(
        concurrency=concurrency,
        requests=int(ms.size),
        errors=errors,
        seconds=round(seconds, 3),
        rps=round(ms.size / seconds, 1) if seconds else 0.0,
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        max_ms=round(float(ms.max()), 2) if ms.size else float("nan"),
        mean_ms=round(float(ms.mean()), 2) if ms.size else float("nan"),
        client_cpu_ms_per_request=round(client_cpu_s * 1000.0 / max(ms.size + errors, 1), 3),
        error_samples=samples[:5],
    )


class HttpError(Exception):
    """The server broke the connection or answered in a way this client does not read."""


# What a broken or unreadable exchange raises; the connection is then closed and reopened.
CLIENT_ERRORS = (HttpError, OSError, ValueError, IndexError, asyncio.IncompleteReadError)


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length bodies."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.header_lines = f"Host: {self.host}:{self.port}\r\n{extra}".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\n"
            + self.header_lines
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise HttpError("connection closed by the server")
            status = int(status_line.split(b" ", 2)[1])
            length, keep_alive = None, True
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise HttpError(f"unsupported transfer-encoding {value.strip()!r}")
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
            if length is None:
                raise HttpError("response without Content-Length")
            payload = await self.reader.readexactly(length)
        except CLIENT_ERRORS:
            await self.close()
            raise
        if not keep_alive:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def exchange(conn: Connection, path: str, body: bytes, timeout_s: float) -> str | None:
    """POST `body`; None when the answer is a 200, else what went wrong (the connection is
    closed after a broken exchange, and reopened by the next one)."""
    try:
        async with asyncio.timeout(timeout_s):
            status, text = await conn.post(path, body)
    except (*CLIENT_ERRORS, TimeoutError) as exc:
        await conn.close()
        return f"{type(exc).__name__}: {exc}"
    return None if status == 200 else f"HTTP {status}: {text[:200]!r}"


async def drive(
    base_url: str,
    payloads: PayloadFn,
    *,
    total: int,
    concurrency: int,
    warmup: int = 0,
    path: str = "/predict",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> RunStats:
    """Send `warmup` unmeasured then `total` measured requests, `concurrency` at a time."""
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0
    connections = [Connection(base_url, headers or {}) for _ in range(concurrency)]

    async def loop(conn: Connection, budget: list[int], record: bool) -> None:
        nonlocal errors
        while budget[0] > 0:
            budget[0] -= 1
            body = json.dumps(payloads()).encode()
            start = time.perf_counter()
            failure = await exchange(conn, path, body, timeout_s)
            elapsed = time.perf_counter() - start
            if not record:
                continue
            if failure is None:
                latencies.append(elapsed)
            else:
                errors += 1
                samples.append(failure)

    try:
        if warmup:  # also opens every connection before the measured part
            spare = [warmup]
            await asyncio.gather(*(loop(c, spare, False) for c in connections))
        budget = [total]
        cpu_before, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(loop(c, budget, True) for c in connections))
        seconds = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu_before
    finally:
        for conn in connections:
            await conn.close()
    return summarise(
        latencies,
        concurrency=concurrency,
        errors=errors,
        seconds=seconds,
        samples=samples,
        client_cpu_s=client_cpu_s,
    )


# A connection idle longer than this is not reused: uvicorn closes keep-alive connections idle
# for 5 s, and a request sent on one that is closing fails for the client, not the server.
IDLE_REUSE_S = 4.0


async def drive_open(
    base_url: str,
    payloads: PayloadFn,
    *,
    rate: float,
    total: int,
    seed: int = 0,
    path: str = "/predict",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    max_connections: int = 64,
) -> RunStats:
    """Open loop: `total` requests arriving as a Poisson process of `rate` per second, as
    independent upstream callers send them, whatever the server's pace.

    Each arrival takes an idle keep-alive connection (a new one when none is idle, up to
    `max_connections`). Latency runs from the scheduled arrival, so time spent waiting for a
    connection or behind a late timer is charged to the request (no coordinated omission).
    `concurrency` in the result is the most requests in flight at once.
    """
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=total)
    idle: list[tuple[Connection, float]] = []  # with when each was last used, newest last
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    samples: list[str] = []
    errors, in_flight, peak = 0, 0, 0

    async def one(arrival: float) -> None:
        nonlocal errors, in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        async with slots:
            conn = Connection(base_url, headers or {})
            if idle:
                reused, used_at = idle.pop()
                if time.perf_counter() - used_at < IDLE_REUSE_S:
                    conn = reused
                else:  # the server may have closed it (uvicorn keeps idle ones 5 s)
                    await reused.close()
            body = json.dumps(payloads()).encode()
            failure = await exchange(conn, path, body, timeout_s)
            idle.append((conn, time.perf_counter()))
        in_flight -= 1
        if failure is None:
            latencies.append(time.perf_counter() - arrival)
        else:
            errors += 1
            samples.append(failure)

    tasks: list[asyncio.Task[None]] = []
    cpu_before, started = time.process_time(), time.perf_counter()
    arrival = started
    try:
        for gap in gaps:
            arrival += float(gap)
            if (delay := arrival - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(arrival)))
        await asyncio.gather(*tasks)
    finally:
        for conn, _ in idle:
            await conn.close()
    return summarise(
        latencies,
        concurrency=peak,
        errors=errors,
        seconds=time.perf_counter() - started,
        samples=samples,
        client_cpu_s=time.process_time() - cpu_before,
    )
