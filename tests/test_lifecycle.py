"""The API's background loop (service/api/lifecycle.py): how a failing step is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from service.api.lifecycle import REPRIORITIZE_JOB
from service.api.lifecycle import log as lifecycle_log
from service.api.main import create_app
from service.config import Settings
from service.db import init_db, make_engine
from service.logs import REPEAT_LOG_S, RepeatedFailures
from service.ml import registry
from service.ml.training import TrainResult
from service.outbox import LABELING_QUEUE
from tests.conftest import auth, register_promoted, sqlite_app


def _database_down() -> OperationalError:
    """A real outage: a PostgreSQL URL where nothing listens."""
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    try:
        with pytest.raises(OperationalError) as excinfo, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    return excinfo.value


def test_a_step_failing_the_same_way_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage used to log a traceback per step every two seconds."""
    failures = RepeatedFailures("background step drain_outbox", lifecycle_log)
    down = _database_down()
    with caplog.at_level(logging.INFO, logger="service.api.lifecycle"):
        for second in range(0, 120, 2):  # two minutes of rounds
            failures.failed(down, now=float(second))
        failures.succeeded()
        failures.failed(ValueError("a bug"), now=200.0)
        failures.failed(ValueError("a bug"), now=300.0)
    messages = [(r.getMessage(), r.exc_info) for r in caplog.records]
    assert len(messages) == 5, messages
    (first, tb1), (again, tb2), (back, _), (bug, tb3), (bug_again, tb4) = messages
    assert bug_again.endswith("(failing for 2 rounds): ValueError: a bug") and tb4 is None
    assert first.startswith("background step drain_outbox failed: OperationalError")
    assert again.startswith("background step drain_outbox failed (failing for 31 rounds)")
    assert tb1 is None and tb2 is None  # an outage is a line, not a traceback
    assert back == "background step drain_outbox works again after 60 failed rounds"
    assert bug == "background step drain_outbox failed: ValueError: a bug" and tb3 is not None
    assert REPEAT_LOG_S == 60.0


PUT_OFF_STEPS = ("redeliver_outbox", "redeliver_jobs", "auto_recalibrate")


def _said(caplog: pytest.LogCaptureFixture, step: str, what: str) -> list[str]:
    """The background loop's lines about `step` that hold `what`."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "service.api.lifecycle"
        and r.getMessage().startswith(f"background step {step} ")
        and what in r.getMessage()
    ]


def _until_said(caplog: pytest.LogCaptureFixture, what: str, *, within_s: float) -> None:
    """Until every step of PUT_OFF_STEPS has a line holding `what`."""
    deadline = time.monotonic() + within_s
    while not all(_said(caplog, step, what) for step in PUT_OFF_STEPS):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)


def test_a_step_put_off_after_a_failure_is_not_said_to_work_again_during_the_outage(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redeliver_outbox, redeliver_jobs and auto_recalibrate moved their next check forward
    before they touched the database: the round after a failure skipped them, which counted
    as a success (`works again after 1 failed rounds` with the database still away), and they
    tried again only an interval later (30 s; an hour for the recalibration here). Now a step
    that failed is tried again at the next round, and said to work once it does."""
    caplog.set_level(logging.INFO, logger="service.api.lifecycle")
    with sqlite_app(
        make_settings,
        tmp_path,
        shared_result,
        watch_interval_s=0.05,
        recalibrate_interval_s=3600.0,
    ) as client:
        state = client.app.state.tagflow  # type: ignore[attr-defined]
        working = state.engine
        state.engine = create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
        )
        try:
            time.sleep(0.5)  # a round that began on the working database has ended
            # Due again in the outage (the first rounds ran them on the working database).
            state.next_redelivery_check = state.next_job_check = state.next_recalibration = 0.0
            _until_said(caplog, "failed", within_s=30)
            time.sleep(1.0)  # rounds every 0.05 s, the database still away
            during = [line for step in PUT_OFF_STEPS for line in _said(caplog, step, "again")]
        finally:
            state.engine.dispose()
            state.engine = working
        _until_said(caplog, "works again", within_s=10)  # not an interval later
    assert during == []
    for step in PUT_OFF_STEPS:
        (back,) = _said(caplog, step, "works again")
        assert back.startswith(f"background step {step} works again after "), back
        rounds = int(back.split("after ")[1].split()[0])
        assert rounds > 1, back  # tried at each round of the outage, not once


def _rescorings(redis_conn: redis.Redis) -> list[tuple[object, ...]]:
    """The queued re-scorings of the review queue, by the version that asked for each."""
    queued = Queue(LABELING_QUEUE, connection=redis_conn).get_jobs()
    return [job.args for job in queued if job.func_name == REPRIORITIZE_JOB]


def _serves(client: TestClient, version: str) -> None:
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"{version} is not served"
        time.sleep(0.05)


def test_api_processes_ask_for_one_rescoring_of_the_queue_per_change_of_production(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    redis_conn: redis.Redis,
    seed_result: TrainResult,
    shared_result: TrainResult,
) -> None:
    """Every API process swaps to a new production version, and used to queue a re-scoring of
    every open review task for it: with N processes, N jobs of the same work (seconds each on a
    worker, per 5,000 tasks), ahead of the review items behind them. One per change now."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    first_version = register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        candidate = registry.register(
            session, result=shared_result, artifacts_dir=settings.artifacts_dir
        ).version
    engine.dispose()
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert _rescorings(redis_conn) == [(first_version,)]  # both started serving it
        promoted = first.post(f"/models/{candidate}/promote", headers=auth("admin"))
        assert promoted.status_code == 200
        _serves(second, candidate)
        assert _rescorings(redis_conn) == [(first_version,), (candidate,)]
        # Back and forth: each change of production is one more, even to a version served before.
        assert second.post("/models/rollback", headers=auth("admin")).status_code == 200
        _serves(first, first_version)
        assert first.post(f"/models/{candidate}/promote", headers=auth("admin")).status_code == 200
        _serves(second, candidate)
    assert _rescorings(redis_conn) == [
        (first_version,),
        (candidate,),
        (first_version,),
        (candidate,),
    ]


def test_a_production_refused_at_start_is_logged_as_nothing_served(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal's line said "still serving None" when no version was served yet (the API
    started with its production artifact damaged)."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    version = register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        row = registry.get_version(session, version=version)
    engine.dispose()
    folder = registry.artifact_folder(row, artifacts_dir=settings.artifacts_dir)
    (folder / registry.MODEL_FILE).write_bytes(b"not the model")
    caplog.set_level(logging.ERROR, logger="service.api.lifecycle")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 503
    (line,) = {r.getMessage() for r in caplog.records if "checksum" in r.getMessage()}
    assert line.endswith(": refused; nothing served"), line
