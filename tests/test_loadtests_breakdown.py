"""loadtests/breakdown.py, the benchmark's in-process stage timings, runs against a real
registry: the benchmark reports a failed breakdown as null, so a broken script would otherwise
only show as a missing section in the results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from service.config import SEED_DATASET, Settings
from service.db import init_db, make_engine
from service.ml.training import TrainResult
from tests.conftest import ROOT, register_promoted


def test_breakdown_times_every_stage_of_the_production_model(
    make_settings: Callable[..., Settings], seed_result: TrainResult
) -> None:
    settings = make_settings()
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    version = register_promoted(engine, settings, seed_result)
    engine.dispose()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TAGFLOW_API_KEYS": "admin:k",  # as the benchmark sets for its servers
        "TAGFLOW_DATA_DIR": str(settings.data_dir),
        "TAGFLOW_ENCODER_DIR": str(settings.resolved_encoder_dir),
    }
    script = ROOT / "loadtests" / "breakdown.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dataset", str(SEED_DATASET), "--repeats", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["model_version"] == version
    for size in (1, 8, 16):
        timings = report["ms_per_call"][f"batch_{size}"]
        assert {"tokenize", "encode_onnx-int8_t2", "embedding_head"} <= set(timings)
        assert all(ms > 0 for ms in timings.values()), timings
