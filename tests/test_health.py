"""The probes: /healthz is the process, /readyz the model and the database."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlmodel import create_engine


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
        with caplog.at_level(logging.WARNING, logger="service.db"):
            down = sqlite_client.get("/readyz")
    finally:
        state.engine.dispose()
        state.engine = working
    assert down.status_code == 503
    assert down.json()["database"] is False
    assert down.json()["model_version"] == "v0001"
    assert sqlite_client.get("/healthz").json() == {"status": "ok"}  # alive all along
    assert any("database ping failed" in r.getMessage() for r in caplog.records)
    assert sqlite_client.get("/readyz").status_code == 200
