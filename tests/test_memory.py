"""Memory over time: what an app loads goes when the app stops, and a hot swap frees the model
it replaces, so neither a process that runs many apps (the test suite) nor an API that swaps
versions for months keeps more than it serves."""

from __future__ import annotations

import gc
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session

from service.config import Settings
from service.ml import registry
from service.ml.training import TrainResult
from tests.conftest import auth, sqlite_app

ITEMS = [
    {"title": "Tracking experiments and deploying models", "description": "An MLOps stack."},
    {"title": "YOLOv8 for counting cars", "description": "Object detection on traffic video."},
    {"title": "BERT for named entities", "description": ""},
]


def _served_app_refs(
    make_settings: Callable[..., Settings], tmp_path: Path, result: TrainResult
) -> list[weakref.ref[object]]:
    """Weak references to what a real app loads (its state, encoder, model), taken while it
    serves; the app has stopped and is dropped when this returns."""
    with sqlite_app(make_settings, tmp_path, result) as client:
        assert client.post("/predict", json=ITEMS[0], headers=auth("client")).status_code == 200
        state = client.app.state.tagflow
        loaded = state.predictor.current
        assert loaded is not None
        return [weakref.ref(o) for o in (state, state.predictor.encoder, loaded.model)]


def test_a_stopped_app_leaves_nothing_it_loaded_behind(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    refs = _served_app_refs(make_settings, tmp_path, shared_result)
    gc.collect()
    # The lifespan froze them (gc.freeze) for quicker collections while it served; a frozen
    # cycle is never collected, so every app the suite started stayed in memory.
    assert [r() is None for r in refs] == [True, True, True]


def test_a_hot_swap_frees_the_model_it_replaces(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    seed_result: TrainResult,
) -> None:
    """Forty promotions back and forth, each followed by predictions (which build the model's
    fast-path heads and word caches), then one more with none after it: only the model served
    is still alive, whatever scored the last requests before it."""
    # Only the promotions swap: a watch tick loading the same version at once would hold the
    # model it replaces for as long as its load takes.
    with sqlite_app(
        make_settings, tmp_path, shared_result, shadow=False, watch_interval_s=3600
    ) as client:
        state = client.app.state.tagflow
        with Session(state.engine, expire_on_commit=False) as session:
            other = registry.register(
                session, result=seed_result, artifacts_dir=state.settings.artifacts_dir
            ).version
        first = state.predictor.current
        assert first is not None
        models = [weakref.ref(first.model)]
        del first
        for i in range(41):
            version = other if i % 2 == 0 else "v0001"
            promoted = client.post(f"/models/{version}/promote", headers=auth("admin"))
            assert promoted.status_code == 200
            models.append(weakref.ref(state.predictor.current.model))
            if i == 40:
                break
            for item in ITEMS:
                answer = client.post("/predict", json=item, headers=auth("client")).json()
                assert answer["model_version"] == version
        assert state.batcher.stats.encoded > 0  # the scorer threads had work too
        gc.collect()
        # An idle scorer thread kept its last task's batch, and with it the model that scored
        # it; so did the micro-batcher's loop while it waited for the next request.
        alive = [i for i, ref in enumerate(models) if ref() is not None]
        assert alive == [41]


def test_a_model_let_go_is_freed_without_waiting_for_the_collector(
    shared_result: TrainResult,
) -> None:
    """A swapped-out model goes by reference counting alone, fast-path heads included: with
    a reference cycle among them, its vocabularies waited for a full collection, which a large
    heap makes rare."""
    model = pickle.loads(pickle.dumps(shared_result.model))  # as an artifact loads
    model.fast_proba([ITEMS[0]["title"]])  # builds the fast-path heads
    heads = model._fast
    assert heads is not None
    refs = [weakref.ref(model), *(weakref.ref(v) for v in heads[1].vectorizers)]
    del model, heads
    gc.disable()
    try:
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()
