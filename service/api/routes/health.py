"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """200 only when a model is loaded and the database answers."""
    current = state.predictor.current
    database = ping(state.engine)
    ready = current is not None and database
    body = {
        "ready": ready,
        "model_version": current.version if current else None,
        "database": database,
        "model_errors": state.model_errors[-5:],
    }
    return JSONResponse(body, status_code=200 if ready else 503)
