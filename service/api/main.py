"""The FastAPI application: `create_app(settings)` builds it; the lifespan owns every resource."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis import Redis
from rq import Queue

from service.api import errors
from service.api.answers import document_answers
from service.api.lifecycle import drain_outbox, sync_production, watch
from service.api.limits import BodyLimit, max_body_bytes
from service.api.routes import (
    docs,
    feedback,
    health,
    jobs,
    labels,
    metrics,
    models,
    predict,
    predictions,
    review,
    review_page,
    tags,
    whoami,
)
from service.api.state import AppState, Queues
from service.api.telemetry import read_state
from service.api_keys import MIN_KEY_CHARS, KeyRing
from service.config import Settings
from service.db import init_db, make_engine
from service.dead_letters import WaitingCount
from service.metrics import Metrics, RequestMetrics, StateCollector
from service.ml.encoder import load_encoder
from service.ml.serving import MicroBatcher, Predictor
from service.outbox import LABELING_QUEUE, TRAINING_QUEUE
from service.prediction_log import PredictionLog
from service.tags import load_tags
from service.unwritten import Announcer, announce, update_quietly

log = logging.getLogger(__name__)

ROUTERS = (
    docs.router,
    health.router,
    predict.router,
    predictions.router,
    tags.router,
    models.router,
    review.router,
    labels.router,
    feedback.router,
    jobs.router,
    metrics.router,
    review_page.router,
    whoami.router,
)
# Once, here: the routers are the modules', and every app `create_app` builds includes them.
for _router in ROUTERS:
    document_answers(_router)


def build_state(settings: Settings, metrics: Metrics) -> AppState:
    """Create every shared resource (blocking: runs before the server accepts requests)."""
    if not settings.redis_url:
        raise RuntimeError("TAGFLOW_REDIS_URL is not set; `tagflow up` starts an embedded Redis")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    tag_set = load_tags(settings.tags_file)
    encoder = load_encoder(
        settings.resolved_encoder_dir,
        settings.encoder,
        threads=settings.encoder_threads,
        cache_size=settings.embedding_cache_size,
    )
    predictor = Predictor(encoder, tag_set, fast_path=settings.fast_path)
    # A short socket timeout: an unreachable Redis must not stall the outbox relay for long.
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    queues = Queues(
        labeling=Queue(LABELING_QUEUE, connection=redis),
        training=Queue(TRAINING_QUEUE, connection=redis),
    )
    state = AppState(
        settings=settings,
        engine=engine,
        tags=tag_set,
        predictor=predictor,
        batcher=MicroBatcher(
            predictor,
            max_items=settings.microbatch_max,
            wait_ms=settings.microbatch_wait_ms,
            threads=settings.score_threads,
            max_waiting=settings.max_waiting_items,
        ),
        log=PredictionLog(
            engine,
            interval_s=settings.log_flush_interval_s,
            batch_size=settings.log_batch_size,
            audit_share=settings.audit_share,
            dead_letter=settings.dead_letter_path,
            spill=settings.spill_path,
            max_buffered=settings.log_max_buffered,
        ),
        redis=redis,
        queues=queues,
        metrics=metrics,
        dead_letters=WaitingCount(settings.dead_letter_path),
        keys=KeyRing.from_settings(settings),
        unwritten=Announcer(redis),
    )
    metrics.add_collector(StateCollector(lambda: read_state(state)))
    return state


def _drain_quietly(state: AppState) -> None:
    try:
        drain_outbox(state)
    except Exception:
        log.exception("outbox relay failed; rows stay in the outbox")


async def relay_when_woken(state: AppState, woken: asyncio.Event) -> None:
    """Send the outbox to RQ each time `state.wake_relay` is called, on a thread of its own (a
    task for the app's life). Called from the log's flush thread, the relay held every flush
    while Redis hung, up to the client's 2 s socket timeout, and made a flush wait for a relay
    already running: in a QA chaos run with Redis frozen the log's buffer grew from under 30
    rows to 284, the answers a kill -9 then loses. POST /feedback likewise held each report up
    to 2 s. The watch loop relays too, every `watch_interval_s`: this is the fast path."""
    while True:
        await woken.wait()
        woken.clear()
        await asyncio.to_thread(_drain_quietly, state)


def _set_relay_wakeup(state: AppState, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """The event `state.wake_relay` sets, from whichever thread calls it; the prediction log
    calls it once a flush has written rows (their review items wait in the outbox)."""
    woken = asyncio.Event()
    state.wake_relay = lambda: loop.call_soon_threadsafe(woken.set)
    state.log.after_flush = state.wake_relay
    return woken


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state = await asyncio.to_thread(build_state, settings, app.state.metrics)
    # Set before the spill's write-back: its rows are relayed once the relay starts below.
    woken = _set_relay_wakeup(state, asyncio.get_running_loop())
    if taken := await asyncio.to_thread(state.log.take_back_spill):
        log.warning("%d predictions spilled before this start go to the database now", taken)
    await asyncio.to_thread(sync_production, state)
    if state.predictor.current is None and not state.model_errors:
        log.warning("no production model in the registry: /predict answers 503 until one is")
    elif state.predictor.current is None:
        log.warning("the production model was refused: /predict answers 503 until one serves")
    if short := state.keys.guessable():
        log.warning(
            "%d API key(s) of under %d characters (%s): short enough to guess, and /metrics "
            "shows every key's fingerprint to its scraper, who can then test guesses "
            "offline; issue random keys with `tagflow keys new`",
            len(short),
            MIN_KEY_CHARS,
            ", ".join(sorted(c.describe() for c in short)),
        )
    if settings.review_overlap_share and state.keys.shared_review_keys():
        log.warning(
            "second opinions are on but some reviewer keys are shared: 'another reviewer' then "
            "means another declared name; issue personal keys (role/name:key) to make it a person"
        )
    app.state.tagflow = state
    # What is loaded by now (models, vocabularies, SQLAlchemy metadata) lives as long as the
    # process: frozen out of the collector's reach, a full collection no longer walks it. Under
    # load this halved the worst pause (130 -> 70 ms).
    gc.collect()
    gc.freeze()
    state.batcher.start()
    state.log.start()
    watcher = asyncio.create_task(watch(state, settings.watch_interval_s), name="watch")
    announcer = asyncio.create_task(announce(state.log, state.unwritten), name="unwritten")
    relay = asyncio.create_task(relay_when_woken(state, woken), name="outbox-relay")
    try:
        yield
    finally:
        watcher.cancel()
        announcer.cancel()
        relay.cancel()  # the last flush's rows are relayed below, once the log is closed
        await state.batcher.stop()
        await state.log.close()
        # Written, or spilled for the next start: nothing held in memory any more.
        await asyncio.to_thread(update_quietly, state.unwritten, None)
        _drain_quietly(state)
        state.redis.close()
        state.engine.dispose()
        # Frozen objects are never collected, and this app's state is cyclic (the log's
        # after_flush calls back into it): in a process that runs apps one after another, the
        # test suite, every stopped app's state, models and encoder stayed for good, about
        # 43 MB an app. Back in the collector's reach, they go once the app does.
        gc.unfreeze()


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="tagflow",
        version="0.1.0",
        description="Content classification with a human in the loop.",
        lifespan=lifespan,
        # /docs is served by routes.docs from the package, not from a CDN; no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    # Added first, so it runs inside RequestMetrics: a refused body is counted too.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes(settings))
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
