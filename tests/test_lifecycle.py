"""The API's background loop (service/api/lifecycle.py): how a failing step is logged."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from service.api.lifecycle import log as lifecycle_log
from service.logs import REPEAT_LOG_S, RepeatedFailures


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
