"""Database engine and sessions. SQLite by default, PostgreSQL through a postgresql+psycopg URL."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, false, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

import service.entities  # noqa: F401  (registers the tables)
from service.migrations import VERSION_TABLE, current_revision, head_revision, upgrade
from service.pg import (
    POSTGRES_PING_TIMEOUT_S,
    POSTGRES_READ_TIMEOUT_S,
    BoundedConnection,
    bound_pool_pings,
)

log = logging.getLogger(__name__)

__all__ = [
    "POSTGRES_PING_TIMEOUT_S",
    "POSTGRES_READ_TIMEOUT_S",
    "configuration_refusal",
    "current_revision",
    "head_revision",
    "init_db",
    "is_outage",
    "is_outage_to_wait_for",
    "is_server_away",
    "make_engine",
    "ping",
    "session_scope",
    "take_sqlite_write_lock",
    "upgrade",
]


# libpq waits for a server without end by default: with the database host hanging (it takes
# the connection and never answers, as a host cut off by a network fault does), a request, the
# prediction log's flush and the shutdown's last flush and outbox relay all waited forever, so
# a SIGTERM never ended `tagflow serve` and the supervisor's SIGKILL lost the buffered rows
# that an outage otherwise spills to disk. A failed connection is an outage (503, rows kept).
POSTGRES_CONNECT_TIMEOUT_S = 5
# Once connected, a server that stops answering is given up after POSTGRES_READ_TIMEOUT_S per
# exchange (service.pg). Keepalives and tcp_user_timeout add what TCP can tell: a host cut
# off (no ACK, no reset) is found within ~30 s also where that bound is lifted (migrations).
POSTGRES_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: data sent and not acknowledged
}


def make_engine(
    url: str,
    *,
    read_timeout_s: float | None = POSTGRES_READ_TIMEOUT_S,
    ping_timeout_s: float | None = POSTGRES_PING_TIMEOUT_S,
) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so the API and worker can share it,
    PostgreSQL a bound on each wait for the server (`read_timeout_s`, None for none), and a
    shorter one on the pool's ping of a pooled connection (`ping_timeout_s`)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            _enable_wal(dbapi_conn)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **POSTGRES_KEEPALIVES},
    )

    @event.listens_for(engine, "do_connect")
    def _bounded(_dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        conn = BoundedConnection.connect(*cargs, **cparams)
        conn.read_timeout_s = read_timeout_s
        return conn

    bound_pool_pings(engine, read_timeout_s=read_timeout_s, ping_timeout_s=ping_timeout_s)
    return engine


def _enable_wal(dbapi_conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the file to WAL, retrying while another connection holds a lock.

    Only a new file needs the switch (WAL is persistent), and it takes an exclusive lock that
    SQLite refuses at once, without the busy timeout, when another process opens the same new
    file at that moment (API and worker starting together). That lasts milliseconds.
    """
    for attempt in range(attempts):
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
        finally:
            cur.close()


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest migration (see service.migrations); safe to call from
    several processes at once, and cheap when the database is already up to date."""
    upgrade(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session for code outside a request (workers, CLI, background tasks)."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


# PostgreSQL's SQLSTATE for a table that does not exist (SQLite says so as an OperationalError).
UNDEFINED_TABLE = "42P01"
# PostgreSQL's SQLSTATE for a lock not granted within lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
# How long a prune of the prediction log (`tagflow db prune`, the worker's daily one) waits
# for a lock by default: a migration or a long transaction holding the table stops it instead
# of holding it, and whatever waits behind it, for good.
PRUNE_LOCK_TIMEOUT_S = 10.0


def bound_lock_waits(session: Session, *, seconds: float | None) -> None:
    """Let each lock the session's transaction waits for take `seconds` at most, until the
    transaction ends (PostgreSQL's `SET LOCAL lock_timeout`), after which the statement fails
    with LOCK_NOT_AVAILABLE, an outage; by default (and with `seconds` None) PostgreSQL waits
    as long as the lock is held. SQLite waits its busy timeout (30 s) and needs nothing."""
    if seconds is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT set_config('lock_timeout', :timeout, true)"),
            {"timeout": f"{max(1, round(seconds * 1000))}ms"},
        )


def take_sqlite_write_lock(session: Session, *, table: type[SQLModel]) -> None:
    """SQLite: hold the database's write lock until the session's transaction ends, so no
    other writer comes between what it reads and what it writes. A transaction's first write
    takes the lock, and what the transaction reads after that is the latest commit; this
    write, to `table`, changes no row. (PostgreSQL callers lock rows or take advisory locks.)"""
    key = next(iter(table.__table__.primary_key.columns))  # type: ignore[attr-defined]
    session.execute(
        update(table).where(false()).values({key.name: key}),
        execution_options={"synchronize_session": False},
    )


def take_turns(session: Session, *, cls: int, key: str, table: type[SQLModel]) -> None:
    """Make the transactions that call this with the same `cls` and `key` take turns, each
    holding the turn until its commit or rollback. PostgreSQL: the transaction-level advisory
    lock on (`cls`, a hash of `key`), so transactions with other keys go on; SQLite: the
    database's write lock (`take_sqlite_write_lock`, by a write to `table`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(:key))"), {"cls": cls, "key": key}
        )
    else:
        take_sqlite_write_lock(session, table=table)


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether a statement failed because a lock was not granted within lock_timeout."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == LOCK_NOT_AVAILABLE


# PostgreSQL's SQLSTATEs for a statement that lost to another transaction: a lock not granted
# within lock_timeout, a serialization failure, a deadlock. Outages to whoever retries them
# (the same statement may pass later), but the database answers all along.
POSTGRES_CONFLICTS = (LOCK_NOT_AVAILABLE, "40001", "40P01")


def is_conflict(exc: BaseException) -> bool:
    """Whether a statement failed for another transaction's locks, not for want of the
    database (see POSTGRES_CONFLICTS)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in POSTGRES_CONFLICTS


# SQLite's result codes for a file that is locked, read-only, or cannot be opened, read or
# written: the state of the machine, not of the statement (its OperationalError also covers
# syntax errors).
SQLITE_OUTAGES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_READONLY",
)
# PostgreSQL's SQLSTATEs (or their classes) that a retry may get past: the connection (08),
# resources (53), an operator's intervention (57P01-57P03, 57014), a lock or serialization
# conflict (55P03, 40001, 40P01), no tagflow tables (42P01). Others psycopg reports as an
# OperationalError (a program limit, 54xxx) fail the same way every time.
POSTGRES_OUTAGES = ("08", "53", "57P0", "57014", "55P03", "40001", "40P01", UNDEFINED_TABLE)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed statement may succeed as it is later: the database was unreachable,
    busy (SQLite's lock), timed out, or has no tagflow tables (recreated empty, not yet
    upgraded), rather than refusing what was sent.

    A connection refused for its configuration (`configuration_refusal`) counts too: a
    running API keeps its rows and answers 503 as in an outage, as whoever fixes it (creates
    the database, the role) restarts nothing. A process deciding whether to wait for the
    database at all (the worker, `tagflow up`) asks `is_outage_to_wait_for` instead."""
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool
        return True
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        name = getattr(orig, "sqlite_errorname", "") or ""
        return name.startswith(SQLITE_OUTAGES) or str(orig).startswith("no such table")
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:  # no answer from a server: refused, unreachable, cut off
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return sqlstate.startswith(POSTGRES_OUTAGES)


# What a PostgreSQL server says (libpq passes it on after "FATAL:") when it refuses a connection
# for a setting of the client's or its own that no wait changes: no such database (SQLSTATE
# 3D000), no such role, a role without LOGIN or pg_hba.conf rejecting it (28000), failed
# password, ident or peer authentication (28P01), no CONNECT privilege (42501). psycopg gives
# a connection it could not open no SQLSTATE (an OperationalError, as for a refused port), so
# the server's message is what tells them apart; its text is stable across versions. A server
# set to answer in another language is not recognised, and is waited for as an outage is.
POSTGRES_CONFIGURATION_REFUSALS = re.compile(
    r'database ".*" does not exist'
    r'|role ".*" does not exist'
    r'|role ".*" is not permitted to log in'
    r"|authentication failed for user"
    r"|no pg_hba\.conf entry for"
    r'|permission denied for database ".*"'
)
# libpq's own, for a server asking for a password the URL does not give.
LIBPQ_CONFIGURATION_REFUSALS = ("fe_sendauth: no password supplied",)


def configuration_refusal(exc: BaseException) -> str | None:
    """The reason a PostgreSQL server refused to open a connection, when it is one no wait
    cures (no such database or role, failed authentication: see
    POSTGRES_CONFIGURATION_REFUSALS), in the server's words (`database "x" does not exist`);
    None for anything else, an outage included. Never holds a password: the server's
    messages name the role and the database only."""
    orig = getattr(exc, "orig", None)
    if not isinstance(exc, sa_exc.OperationalError) or getattr(orig, "sqlstate", None):
        return None
    # One line per host libpq tried ("localhost" is ::1, then 127.0.0.1): any may be the one.
    for line in str(orig).splitlines():
        reason = line.partition("FATAL:")[2].strip()
        if reason and POSTGRES_CONFIGURATION_REFUSALS.search(reason):
            return reason
        for refusal in LIBPQ_CONFIGURATION_REFUSALS:
            if refusal in line:
                return refusal
    return None


def is_outage_to_wait_for(exc: BaseException) -> bool:
    """Whether a process that needs the database should wait for it rather than stop: an
    outage (`is_outage`) that is not a configuration refusal, which waiting never ends."""
    return is_outage(exc) and configuration_refusal(exc) is None


def is_server_away(url: str, exc: BaseException) -> bool:
    """Whether `exc`, met on the database at `url`, is a server away to wait for
    (`is_outage_to_wait_for`). Never SQLite: its outages at a process's start are a path that
    cannot be opened (a configuration error) or a lock its busy timeout waited for already."""
    return make_url(url).get_backend_name() != "sqlite" and is_outage_to_wait_for(exc)


def ping(engine: Engine) -> bool:
    """True when the database answers and holds tagflow's schema (a database recreated empty
    answers `SELECT 1` but refuses every read and write)."""
    return ping_failure(engine) is None


def ping_failure(engine: Engine) -> Exception | None:
    """Why `ping` fails, or None when it does not. Not logged here: the caller knows how often
    it asks (a load balancer's /readyz every second made a line a second in an outage)."""
    from sqlalchemy import text

    try:
        with engine.connect() as conn:
            conn.execute(text(f"SELECT 1 FROM {VERSION_TABLE}"))
        return None
    except Exception as exc:  # readiness probes report, they do not raise
        return exc
