"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.db import ping_failure

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "Not ready: no model is served, or the database does not answer"}
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    """200 only when a model is loaded and the database answers."""
    current = state.predictor.current
    failure = await asyncio.to_thread(ping_failure, state.engine)
    # Counted here, on the event loop: concurrent probes do not race on the count.
    if failure is None:
        state.readiness_failures.succeeded()
    else:
        state.readiness_failures.failed(failure, now=time.monotonic())
    database = failure is None
    ready = current is not None and database
    body = {
        "ready": ready,
        "model_version": current.version if current else None,
        "database": database,
        "model_errors": [
            _without_paths(error, state.settings.artifacts_dir) for error in state.model_errors[-5:]
        ],
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _without_paths(error: str, artifacts_dir: Path) -> str:
    """A refusal as /readyz shows it to callers with no key: an artifact's path relative to the
    artifacts directory (the log line has it whole), so a probe learns no server paths."""
    return error.replace(f"{artifacts_dir.resolve()}{os.sep}", "").replace(
        f"{artifacts_dir}{os.sep}", ""
    )
