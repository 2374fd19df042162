"""Keeping the served model in step with the registry, and the outbox drained."""

from __future__ import annotations

import asyncio
import logging

from sqlmodel import Session

from service.api.state import AppState
from service.entities import ModelStatus
from service.errors import ArtifactError
from service.ml import registry
from service.ml.serving import LoadedModel
from service.outbox import relay

log = logging.getLogger(__name__)


def sync_production(state: AppState) -> str | None:
    """Serve the registry's production version if it is not served yet.

    A version whose artifact fails verification is not served; the old model keeps serving
    and the error is recorded (visible in /readyz). Returns the served version.
    """
    with Session(state.engine) as session:
        row = registry.get_production(session)
        shadow_row = next(
            iter(registry.list_versions(session, status=ModelStatus.CANDIDATE)), None
        ) if state.settings.shadow else None
    current = state.predictor.current
    if row is not None and (current is None or current.version != row.version):
        try:
            state.predictor.swap(LoadedModel(row.version, registry.load_model(row)))
        except ArtifactError as exc:
            message = str(exc)
            if message not in state.model_errors:
                state.model_errors.append(message)
                log.error("%s; still serving %s", message, current.version if current else None)
    _sync_shadow(state, shadow_row)
    return state.predictor.current.version if state.predictor.current else None


def _sync_shadow(state: AppState, row) -> None:  # type: ignore[no-untyped-def]
    shadow = state.predictor.shadow
    if row is None:
        if shadow is not None:
            state.predictor.set_shadow(None)
        return
    if shadow is None or shadow.version != row.version:
        try:
            state.predictor.set_shadow(LoadedModel(row.version, registry.load_model(row)))
        except ArtifactError as exc:
            log.error("shadow candidate refused: %s", exc)


def drain_outbox(state: AppState) -> int:
    with Session(state.engine) as session:
        return relay(session, queue=state.queues.labeling)


async def watch(state: AppState, interval_s: float = 2.0) -> None:
    """Poll the registry (promotions from the CLI or a worker) and retry the outbox."""
    while True:
        await asyncio.sleep(interval_s)
        for step in (sync_production, drain_outbox):
            try:
                await asyncio.to_thread(step, state)
            except Exception:
                log.exception("background step %s failed", step.__name__)
