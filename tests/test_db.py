"""service/db.py on SQLite and PostgreSQL: what counts as an outage, and the readiness ping."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from service.db import POSTGRES_CONNECT_TIMEOUT_S, is_outage, make_engine, ping


def _error_of(engine: Engine, statement: str) -> SQLAlchemyError:
    with engine.connect() as conn, pytest.raises(SQLAlchemyError) as excinfo:
        conn.execute(text(statement))
    return excinfo.value


def test_a_missing_table_is_an_outage_a_bad_statement_is_not(engine: Engine) -> None:
    """A database recreated empty refuses every write until it is upgraded: rows are kept for
    later, not dead-lettered one by one (PostgreSQL says so as a ProgrammingError)."""
    assert is_outage(_error_of(engine, "SELECT 1 FROM no_such_table"))
    assert not is_outage(_error_of(engine, "SELEC 1"))
    assert not is_outage(_error_of(engine, "INSERT INTO labels_nowhere VALUES (1"))


def test_the_ping_wants_the_schema_not_just_an_answer(engine: Engine) -> None:
    assert ping(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    assert not ping(engine)


def test_a_locked_sqlite_file_is_an_outage(tmp_path: Path) -> None:
    """The lock another process holds (SQLite's "database is locked"), not a statement error."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    try:
        error = _error_of(impatient, "INSERT INTO t VALUES (1)")
    finally:
        impatient.dispose()
        holder.close()
    assert "locked" in str(error) and is_outage(error)


def test_postgres_errors_are_outages_by_their_sqlstate(engine: Engine) -> None:
    """A statement cancelled by a timeout may pass later; one past a program limit never
    will, though psycopg reports both as an OperationalError."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's SQLSTATEs")
    with engine.connect() as conn:
        conn.execute(text("SET statement_timeout = 50"))
        with pytest.raises(SQLAlchemyError) as cancelled:
            conn.execute(text("SELECT pg_sleep(1)"))
    assert getattr(cancelled.value.orig, "sqlstate", None) == "57014"  # type: ignore[attr-defined]
    assert is_outage(cancelled.value)
    too_long = _error_of(engine, "SELECT repeat('x', 2000000000)")
    assert getattr(too_long.orig, "sqlstate", "").startswith("54")  # type: ignore[attr-defined]
    assert not is_outage(too_long)


def test_a_postgres_host_that_never_answers_is_an_outage_within_the_connect_timeout() -> None:
    """A host that takes the connection and never answers (cut off by a network fault):
    libpq waited for it without end, so requests, the log's flush and a clean shutdown hung
    (a SIGTERM never ended `tagflow serve`; the supervisor's SIGKILL then lost the buffered
    rows). Now it is an outage, as a refused connection is, after the connect timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes connections; nothing ever answers on them
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/tagflow")
        started = time.monotonic()
        try:
            with pytest.raises(SQLAlchemyError) as error, engine.connect():
                pass
        finally:
            engine.dispose()
        waited = time.monotonic() - started
    assert is_outage(error.value), error.value
    assert POSTGRES_CONNECT_TIMEOUT_S - 1 <= waited < POSTGRES_CONNECT_TIMEOUT_S + 5, waited
