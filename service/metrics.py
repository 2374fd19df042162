"""Prometheus metrics: what the API did (counted as it happens) and what state it is in
(read when scraped).

Each app has a registry of its own rather than prometheus_client's global one, so several apps
in one process (the tests) never share or double-register a metric.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Latency buckets in seconds, dense where the service lives (a few ms) and up to a timeout.
LATENCY_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The instruments the request path updates. Cheap: a counter increment is a lock and
    an add, about a microsecond."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tagflow_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "tagflow_http_request_seconds",
            "Time from request start to the end of the response, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "tagflow_predictions",
            "Predictions served, by model version, tag and status (auto or review)",
            ["model_version", "tag", "status"],
            registry=self.registry,
        )

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class RequestMetrics:
    """Pure ASGI middleware counting every HTTP response by route template and status.

    Not a `BaseHTTPMiddleware`: that wraps each request in extra tasks and streams, which
    costs more than the whole TF-IDF fast path.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # an exception that escapes every handler ends as a 500

        async def send_wrapper(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            self.metrics.requests.labels(template, scope["method"], str(code)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The route a request is counted under: its template, not its path (/models/{version},
    so ids do not explode the labels). A request answered before routing (a 413 for a body
    over the limit) is matched here against the app's documented paths, so that it counts
    under its route too, not as "unmatched"."""
    if (route := scope.get("route")) is not None:
        return getattr(route, "path", None) or "unmatched"
    path = scope.get("path", "")
    for pattern, template in _templates(scope.get("app")):
        if pattern.match(path):
            return template
    return "unmatched"


def _templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The app's path templates (from its OpenAPI schema) as regular expressions, made once."""
    if app is None or not hasattr(app, "openapi"):
        return []
    if (made := getattr(app.state, "path_templates", None)) is None:
        made = [(compile_path(t)[0], t) for t in app.openapi().get("paths", {})]
        app.state.path_templates = made
    return made


@dataclass(frozen=True)
class Sample:
    """One gauge or counter value read at scrape time."""

    name: str
    help: str
    value: float
    labels: dict[str, str]
    counter: bool = False


class StateCollector(Collector):
    """Reads gauges from the running service when Prometheus scrapes.

    `read` returns the samples; a failing read (the database or Redis is down) is logged and
    reported as `tagflow_scrape_errors` instead of failing the whole scrape.
    """

    def __init__(self, read: Callable[[], Iterator[Sample]]) -> None:
        self.read = read
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        try:
            samples = list(self.read())
        except Exception:
            log.exception("reading service state for /metrics failed")
            self.errors += 1
            samples = []
        for s in samples:
            family = families.get(s.name)
            if family is None:
                kind = CounterMetricFamily if s.counter else GaugeMetricFamily
                family = kind(s.name, s.help, labels=sorted(s.labels))
                families[s.name] = family
            family.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        yield from families.values()
        errors = CounterMetricFamily(
            "tagflow_scrape_errors", "Scrapes whose state read failed (see the API log)"
        )
        errors.add_metric([], self.errors)
        yield errors
