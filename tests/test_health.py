"""The probes: /healthz is the process, /readyz the model and the database."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import create_engine

from service.api.main import create_app
from tests.conftest import auth


def test_ready_only_while_the_database_answers(
    sqlite_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    assert sqlite_client.get("/readyz").status_code == 200
    working = state.engine
    # A PostgreSQL URL where nothing listens: the ping fails for real, quickly.
    state.engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    try:
        with caplog.at_level(logging.WARNING, logger="service.api.routes.health"):
            down = sqlite_client.get("/readyz")
    finally:
        state.engine.dispose()
        state.engine = working
    assert down.status_code == 503
    assert down.json()["database"] is False
    assert down.json()["model_version"] == "v0001"
    assert sqlite_client.get("/healthz").json() == {"status": "ok"}  # alive all along
    assert any("database check for /readyz failed" in r.getMessage() for r in caplog.records)
    assert sqlite_client.get("/readyz").status_code == 200


@pytest.mark.parametrize("database", ["unreachable", "empty"])
def test_a_database_outage_is_a_503_to_retry_not_a_500(
    sqlite_client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture, database: str
) -> None:
    """Down, or recreated empty (it answers SELECT 1, yet holds no table): not ready, and the
    routes that need it answer 503 with Retry-After and log one line, not a traceback."""
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    working = state.engine
    state.engine = (
        create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
        )
        if database == "unreachable"
        else create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    )
    try:
        with caplog.at_level(logging.ERROR, logger="service.api.errors"):
            ready = sqlite_client.get("/readyz")
            responses = [
                sqlite_client.get(path, headers=auth("admin"))
                for path in ("/models", "/models/history", "/models")
            ]
    finally:
        state.engine.dispose()
        state.engine = working
    assert ready.status_code == 503 and ready.json()["database"] is False
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json() == {"detail": "the database is unavailable; try again shortly"}
        assert response.headers["retry-after"] == "5"
    # One line for the outage, not one per request: the next comes after a minute at most.
    logged = [r for r in caplog.records if r.name == "service.api.errors"]
    assert len(logged) == 1 and logged[0].exc_info is None
    assert "database unavailable for GET /models" in logged[0].getMessage()
    assert sqlite_client.get("/models", headers=auth("admin")).status_code == 200


def test_with_no_model_every_predict_is_a_503_and_the_log_has_one_line(
    make_settings,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no production model, a client retrying made a log line per request (1,778 in
    20 s); each is still a 503, and the log says it once a minute."""
    item = {"title": "A graph neural network library", "description": "Message passing."}
    with (
        caplog.at_level(logging.WARNING, logger="service.api.errors"),
        TestClient(create_app(make_settings())) as client,
    ):
        answers = [client.post("/predict", json=item, headers=auth("client")) for _ in range(40)]
    assert [a.status_code for a in answers] == [503] * 40
    said = answers[0].json()["detail"]  # and what makes one, for a new deployment
    assert said.startswith("no production model is loaded yet: ") and "--promote" in said
    logged = [r.getMessage() for r in caplog.records if r.name == "service.api.errors"]
    assert logged == [f"domain error: {said}"]


def test_an_outage_is_a_line_when_readyz_first_fails_not_one_per_probe(
    sqlite_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer probes /readyz every second or so: during an outage each probe logged a
    warning (30 probes, 30 lines). Now the first failure is a line, a repeat says how many
    probes have failed since, at most every `every_s` (a minute), and the recovery is a line."""
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    working = state.engine
    state.engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    # A minute in production. An hour for the 30 probes, which a busy machine may take more
    # than a second to make (each past the second was a repeat line the test did not expect);
    # then a second, waited out, for the repeat.
    state.readiness_failures.every_s = 3600.0
    try:
        with caplog.at_level(logging.INFO):
            probes = [sqlite_client.get("/readyz").status_code for _ in range(30)]
            state.readiness_failures.every_s = 1.0
            time.sleep(1.1)  # since the first line: at least that long, however busy
            probes.append(sqlite_client.get("/readyz").status_code)
            state.engine.dispose()
            state.engine = working
            back = sqlite_client.get("/readyz").status_code
            again = sqlite_client.get("/readyz").status_code
    finally:
        state.engine.dispose()
        state.engine = working
    assert probes == [503] * 31 and back == again == 200
    said = [
        (r.levelname, r.getMessage(), r.exc_info)
        for r in caplog.records
        if r.name in ("service.db", "service.api.routes.health")
    ]
    assert len(said) == 3, said
    (level, first, tb), (repeat_level, repeat, _), (back_level, recovered, _) = said
    assert level == repeat_level == "WARNING" and tb is None
    assert first.startswith("database check for /readyz failed: OperationalError")
    assert repeat.startswith("database check for /readyz failed (failing for 31 rounds): ")
    assert back_level == "INFO"
    assert recovered == "database check for /readyz works again after 31 failed rounds"
