"""service/db.py on SQLite and PostgreSQL: what counts as an outage, and the readiness ping."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from service.db import (
    POSTGRES_CONNECT_TIMEOUT_S,
    init_db,
    is_outage,
    make_engine,
    ping,
    take_sqlite_write_lock,
)
from service.entities.review import ReviewTask
from service.pg import CANCEL_TIMEOUT_S
from tests.conftest import POSTGRES_URL
from tests.freezable_proxy import FreezableProxy


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


def test_the_sqlite_write_lock_is_held_until_the_transaction_ends(tmp_path: Path) -> None:
    """What leases, re-scoring and production changes rely on there: no other writer between
    their read and their write, though the write that takes the lock changes no row."""
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    init_db(engine)
    other = sqlite3.connect(tmp_path / "lock.db", timeout=0.1, isolation_level=None)
    try:
        with Session(engine) as session:
            take_sqlite_write_lock(session, table=ReviewTask)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            assert session.exec(select(ReviewTask)).all() == []  # it wrote nothing
            session.rollback()
        other.execute("BEGIN IMMEDIATE")  # free again
        other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


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
    # Without the timeout it waits for good; the upper margin is for a busy CI machine.
    assert POSTGRES_CONNECT_TIMEOUT_S - 1 <= waited < POSTGRES_CONNECT_TIMEOUT_S + 10, waited


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    url = make_url(POSTGRES_URL)
    proxy = FreezableProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()


def test_a_postgres_server_that_hangs_mid_query_is_an_outage_within_the_read_bound(
    proxy: FreezableProxy,
) -> None:
    """A server that hangs with a connection open (frozen, swapping, its disk hung): libpq has
    no read timeout, so a request, the log's flush or a labelling job waited on it for as long
    as it hung (a job until its 10-minute timeout). Now the wait ends after the engine's read
    bound (plus a bounded cancel) with an outage, and the connection is dropped from the pool."""
    url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=proxy.port)
    engine = make_engine(url.render_as_string(hide_password=False), read_timeout_s=2)
    outcome: dict[str, object] = {}

    def query() -> None:
        started = time.monotonic()
        try:
            conn.execute(text("SELECT 1"))
            outcome["answer"] = "answered"
        except SQLAlchemyError as exc:
            outcome["answer"] = exc
        outcome["waited"] = time.monotonic() - started

    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # connected; then the server hangs
            proxy.thawed.clear()
            waiting = threading.Thread(target=query, daemon=True)
            waiting.start()
            waiting.join(2 + CANCEL_TIMEOUT_S + 10)
            proxy.thawed.set()  # without the bound, it answers only now
            waiting.join(10)
            dropped = conn.invalidated  # the pool does not hand out the broken connection
        with engine.connect() as conn:  # the server back, a new connection answers
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    error = outcome["answer"]
    assert isinstance(error, SQLAlchemyError), f"{error} after {outcome['waited']:.1f} s"
    assert is_outage(error), error
    assert dropped
    # Without the bound it answers only once thawed, past 2 + CANCEL_TIMEOUT_S + 10 s; the
    # margin below that is for a busy CI machine (it was 2 s).
    assert 2 <= outcome["waited"] < 2 + CANCEL_TIMEOUT_S + 8, outcome["waited"]  # type: ignore[operator]


def test_the_pools_ping_after_a_server_hang_has_a_bound_of_its_own(
    proxy: FreezableProxy,
) -> None:
    """The pool's pre-ping of a pooled connection waited the full read bound (60 s) for a
    server that hung while the connection sat in the pool, then 2 s for the cancel and 5 s
    for a new connection: the first request after a hang took 67 s. The ping now has a bound
    of its own (POSTGRES_PING_TIMEOUT_S, here 1 s), and statements keep the full one."""
    url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=proxy.port)
    engine = make_engine(
        url.render_as_string(hide_password=False), read_timeout_s=30, ping_timeout_s=1
    )
    outcome: dict[str, object] = {}

    def checkout() -> None:
        started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            outcome["answer"] = "answered"
        except SQLAlchemyError as exc:
            outcome["answer"] = exc
        outcome["waited"] = time.monotonic() - started

    try:
        with engine.connect() as conn:  # connected, then back in the pool
            assert conn.execute(text("SELECT 1")).scalar() == 1
            bound = conn.connection.dbapi_connection.read_timeout_s  # type: ignore[union-attr]
        proxy.thawed.clear()  # the server hangs while the connection sits in the pool
        waiting = threading.Thread(target=checkout, daemon=True)
        waiting.start()
        # A ping of 1 s, the cancel, a new connection that times out: about 8 s; 30 s without
        # (thawed after 24 s, a checkout still waiting then gets an answer: the test fails).
        waiting.join(1 + CANCEL_TIMEOUT_S + POSTGRES_CONNECT_TIMEOUT_S + 16)
        proxy.thawed.set()
        waiting.join(40)
        with engine.connect() as conn:  # the server back: answers, with the statements' bound
            assert conn.execute(text("SELECT 1")).scalar() == 1
            after = conn.connection.dbapi_connection.read_timeout_s  # type: ignore[union-attr]
    finally:
        engine.dispose()
    error = outcome["answer"]
    assert isinstance(error, SQLAlchemyError), f"{error} after {outcome['waited']:.1f} s"
    assert is_outage(error), error
    waited = outcome["waited"]
    assert waited < 1 + CANCEL_TIMEOUT_S + POSTGRES_CONNECT_TIMEOUT_S + 12, waited  # type: ignore[operator]
    assert bound == after == 30
