"""Keeping the served model in step with the registry, and the outbox drained."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from redis.exceptions import RedisError
from rq.exceptions import DuplicateJobError
from sqlmodel import Session

from service.api.state import AppState
from service.calibration import recalibrate_as_configured
from service.entities import ModelStatus, ModelVersion
from service.entities.common import as_utc
from service.errors import ArtifactError
from service.jobs import REPRIORITIZE_TIMEOUT_S, redeliver_lost_jobs
from service.logs import RepeatedFailures
from service.ml import registry
from service.ml.serving import LoadedModel
from service.outbox import redeliver_lost, relay
from service.retention import maybe_enqueue_prune
from service.retrain_queue import maybe_enqueue_auto_retrain

log = logging.getLogger(__name__)
REPRIORITIZE_JOB = "workers.review_jobs.reprioritize"
# A re-scoring's id is kept this long after it ran, so API processes that swap to the same
# production version later (restarts, a rolling deploy) do not ask for it again.
REPRIORITIZE_RESULT_TTL_S = 24 * 3600
# How often the outbox is checked for jobs Redis lost: a look at each job in flight, cheap, but
# not worth every watch tick; a Redis restart costs its review items this long at most.
REDELIVERY_CHECK_S = 30.0


def sync_production(state: AppState) -> str | None:
    """Serve the registry's production version if it is not served yet.

    A version whose artifact fails verification is not served; the old model keeps serving
    and the error is recorded (visible in /readyz). Returns the served version.

    The watch loop and the admin routes (promote, rollback, threshold, recalibrate) run this
    at the same time: one at a time, each reading the registry once it has the lock, so a
    tick that read production before a promotion cannot swap the old version back after the
    route served the new one, nor load the same version a second time beside it. Predictions
    never take the lock: they read `predictor.current`, which a swap replaces in one step.
    """
    with state.production_lock:
        with Session(state.engine) as session:
            row = registry.get_production(session)
            shadow_row = (
                next(iter(registry.list_versions(session, status=ModelStatus.CANDIDATE)), None)
                if state.settings.shadow
                else None
            )
        if row is not None:
            _serve(state, row)
        _sync_shadow(state, shadow_row)
        return state.predictor.current.version if state.predictor.current else None


def _serve(state: AppState, row: ModelVersion) -> None:
    """Swap to `row` if another version is served, or to its cut if that was changed."""
    current = state.predictor.current
    threshold = registry.serving_threshold(row)
    if current is None or current.version != row.version:
        try:
            state.predictor.swap(
                LoadedModel(
                    row.version,
                    registry.load_model(row, artifacts_dir=state.settings.artifacts_dir),
                    threshold,
                )
            )
        except ArtifactError as exc:
            state.predictor.refused(row.version)
            if state.refused_version != row.version:
                state.model_errors.clear()  # about a version no longer production
                state.refused_version = row.version
            message = str(exc)
            if message not in state.model_errors:
                state.model_errors.append(message)
                state.model_refusals += 1
                serving = f"still serving {current.version}" if current else "nothing served"
                log.error("%s; %s", message, serving)
        else:
            _resolve_refusals(state, row)
            _enqueue_reprioritize(state, row)
        return
    # Production is the version served: a refusal of another version (one promoted, refused
    # here, then rolled back from) is over, though no swap happened.
    _resolve_refusals(state, row)
    if current.accept_at != threshold:
        # Recalibrated: the same artifact, served with a new cut.
        state.predictor.swap(replace(current, threshold=threshold))


def _resolve_refusals(state: AppState, row: ModelVersion) -> None:
    """Production `row` serves: forget why production was not served (/readyz,
    tagflow_model_errors); the log keeps each refusal, and tagflow_model_refusals_total counts
    them."""
    state.predictor.refused(None)
    state.refused_version = None
    if state.model_errors:
        log.info("%s serves: the earlier refusal is resolved", row.version)
        state.model_errors.clear()


def _enqueue_reprioritize(state: AppState, row: ModelVersion) -> None:
    """Best effort: re-score the review queue with the newly served model, once per change of
    production however many API processes swap to it (the job's id names the change)."""
    # Microseconds since the epoch; SQLite hands back the UTC it stored as a naive datetime.
    promoted = round(as_utc(row.promoted_at).timestamp() * 1e6) if row.promoted_at else 0
    try:
        state.queues.labeling.enqueue(
            REPRIORITIZE_JOB,
            row.version,
            job_id=f"tagflow-reprioritize-{row.version}-{promoted}",
            unique=True,
            job_timeout=REPRIORITIZE_TIMEOUT_S,
            result_ttl=REPRIORITIZE_RESULT_TTL_S,
        )
    except DuplicateJobError:
        log.debug("re-scoring for %s already asked for by another API process", row.version)
    except RedisError as exc:
        log.warning("could not enqueue review re-prioritisation for %s: %s", row.version, exc)


def _sync_shadow(state: AppState, row: ModelVersion | None) -> None:
    """Shadow `row`, the newest candidate, or nothing when there is none or it is refused: a
    shadow loaded before (a candidate promoted since, say) must not go on scoring."""
    shadow = state.predictor.shadow
    if row is not None and shadow is not None and shadow.version == row.version:
        threshold = registry.serving_threshold(row)
        if shadow.accept_at != threshold:
            # A cut set on the candidate: the same artifact, shadowed with the new cut.
            state.predictor.set_shadow(replace(shadow, threshold=threshold))
        return
    if (row is None or not _load_shadow(state, row)) and shadow is not None:
        state.predictor.set_shadow(None)


def _load_shadow(state: AppState, row: ModelVersion) -> bool:
    """Shadow `row`; False when it is refused, which is logged once per state of its artifact."""
    artifacts_dir = state.settings.artifacts_dir
    stamp = registry.artifact_stamp(row, artifacts_dir=artifacts_dir)
    if row.version in state.shadow_refused and state.shadow_refused[row.version] == stamp:
        return False  # refused as it is: the watch loop comes back every few seconds
    try:
        model = registry.load_model(row, artifacts_dir=artifacts_dir)
        loaded = LoadedModel(row.version, model, registry.serving_threshold(row))
        state.predictor.set_shadow(loaded)  # refuses unapproved tags
    except ArtifactError as exc:
        state.shadow_refused[row.version] = stamp
        state.model_refusals += 1
        log.error("shadow candidate refused: %s; tried again once its artifact changes", exc)
        return False
    if state.shadow_refused.pop(row.version, None) is not None:
        log.info("shadow candidate %s loads now: its artifact was restored", row.version)
    return True


def drain_outbox(state: AppState) -> int:
    """Send unsent outbox rows to RQ (one relay at a time in this process)."""
    with state.outbox_lock, Session(state.engine) as session:
        return relay(session, queue=state.queues.labeling, failures=state.outbox_failures)


# The steps below that run every so often set their next time once they have done their work,
# not before: set before, the round after a failure skipped the step, which the watch loop
# counted as a success ("works again after 1 failed rounds" with the database still away),
# and the step was tried again only a full interval later. A failed step is tried at the next
# round (every `watch_interval_s`), its failures logged once a minute (`RepeatedFailures`).


def redeliver_outbox(state: AppState) -> int:
    """Every `REDELIVERY_CHECK_S` (and at the first tick, and at each tick after a failure),
    send again the outbox rows whose job Redis lost before the worker ran it
    (`outbox.redeliver_lost`)."""
    if time.monotonic() < state.next_redelivery_check:
        return 0
    with state.outbox_lock, Session(state.engine) as session:
        sent = redeliver_lost(session, queue=state.queues.labeling)
    state.next_redelivery_check = time.monotonic() + REDELIVERY_CHECK_S
    return sent


def redeliver_jobs(state: AppState) -> int:
    """Every `REDELIVERY_CHECK_S` (and at the first tick, and at each tick after a failure),
    queue again the admin jobs (a retraining, a comparison) that Redis lost
    (`jobs.redeliver_lost_jobs`)."""
    if time.monotonic() < state.next_job_check:
        return 0
    with Session(state.engine) as session:
        queued = redeliver_lost_jobs(session, queue=state.queues.training)
    state.next_job_check = time.monotonic() + REDELIVERY_CHECK_S
    return queued


def auto_retrain(state: AppState) -> str | None:
    """Queue a retraining once enough new labels exist (`retrain_after_labels`)."""
    with Session(state.engine) as session:
        return maybe_enqueue_auto_retrain(
            session, settings=state.settings, queue=state.queues.training
        )


def auto_recalibrate(state: AppState) -> None:
    """Every `recalibrate_interval_s` (and at each tick after a failure), move the served cut
    where the audit sample shows it should be: up when live precision is below target, down
    when a lower cut reaches it (service/calibration.py)."""
    settings = state.settings
    current = state.predictor.current
    if not settings.recalibrate_interval_s or current is None:
        return
    if time.monotonic() < state.next_recalibration:
        return
    with Session(state.engine) as session:
        outcome = recalibrate_as_configured(
            session, version=current.version, settings=settings, apply=True
        )
    # Done: not again for an interval, even should serving the new cut fail below (the
    # watch loop's sync_production serves it at its next round).
    state.next_recalibration = time.monotonic() + settings.recalibrate_interval_s
    if outcome.applied:
        sync_production(state)


def auto_prune(state: AppState) -> str | None:
    """Once a day across all API processes, queue the retention job (`retention_days`)."""
    with Session(state.engine) as session:
        return maybe_enqueue_prune(
            session, queue=state.queues.training, retention_days=state.settings.retention_days
        )


async def watch(state: AppState, interval_s: float = 2.0) -> None:
    """Poll the registry (promotions from the CLI or a worker), retry the outbox and send again
    what Redis lost of it and of the admins' jobs, start automatic retraining, move the served
    cut by the audit, and queue the daily retention."""
    steps = (
        sync_production,
        redeliver_outbox,
        drain_outbox,
        redeliver_jobs,
        auto_retrain,
        auto_recalibrate,
        auto_prune,
    )
    failures = {
        step.__name__: RepeatedFailures(f"background step {step.__name__}", log) for step in steps
    }
    while True:
        await asyncio.sleep(interval_s)
        for step in steps:
            try:
                await asyncio.to_thread(step, state)
            except Exception as exc:
                failures[step.__name__].failed(exc, now=time.monotonic())
            else:
                failures[step.__name__].succeeded()
