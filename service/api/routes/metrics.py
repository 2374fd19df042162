"""GET /metrics: Prometheus exposition of the API's counters and the service's state."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import AnyKey, StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(_caller: AnyKey, state: StateDep) -> Response:
    """Prometheus text format. Any valid key may scrape (give Prometheus a `client` key as a
    bearer token); the scrape reads the database and Redis, so it runs on a worker thread."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
