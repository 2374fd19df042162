"""GET /metrics: Prometheus exposition of the API's counters and the service's state."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsKey, StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(_caller: MetricsKey, state: StateDep) -> Response:
    """Prometheus text format, for a `metrics` (or admin) key: the scrape shows every key's
    fingerprint, and 48 bits of a SHA-256 confirm a guessed key offline. It reads the database
    and Redis, so it runs on a worker thread."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
