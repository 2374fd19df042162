"""Memory over time: what an app loads goes when the app stops, and a hot swap frees the model
it replaces, so neither a process that runs many apps (the test suite) nor an API that swaps
versions for months keeps more than it serves."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

from service.config import Settings
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
