"""PostgreSQL connections that do not wait for a server without end (see `BoundedConnection`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

RV = TypeVar("RV")

# How long one exchange with the server (a statement and its rows, a commit, the pool's ping)
# may take before the connection is given up as an outage. Ten times anything tagflow asks of
# the database at its sizes (its slowest, a prune batch or a retraining's read of every label,
# take seconds); migrations, which may rebuild an index over the whole log, are exempt
# (`unbounded`).
POSTGRES_READ_TIMEOUT_S = 60.0
# How long the pool's ping of a connection that sat in the pool may take (`bound_pool_pings`):
# an empty statement that a server answering at all answers in milliseconds. With the read
# bound, the first request after a server hang waited 60 s for it (then the cancel and a new
# connection's timeout: 67 s).
POSTGRES_PING_TIMEOUT_S = 5.0
# How long the server may take to stop the statement given up, before the connection is
# closed anyway (a frozen server never answers the cancel request either).
CANCEL_TIMEOUT_S = 2.0


class BoundedConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A psycopg connection whose every wait for the server ends after `read_timeout_s`
    (None: no bound).

    libpq has no read timeout, and neither TCP nor the server helps when the server hangs:
    a frozen server (stopped, swapping, its disk hung) keeps its kernel ACKing, so keepalives
    and `tcp_user_timeout` never fire, and its own statement_timeout never runs. A request,
    the prediction log's flush or a labelling job then waited for as long as it hung (a job
    until its own timeout, 10 minutes). Given up, the statement is cancelled (bounded: a
    frozen server does not answer that either), the connection closed, and an
    OperationalError without SQLSTATE raised: an outage, and SQLAlchemy, seeing the
    connection closed, drops it from its pool.
    """

    read_timeout_s: float | None = POSTGRES_READ_TIMEOUT_S

    def wait(self, gen: Any, interval: float | None = None, timeout: float | None = None) -> Any:
        """psycopg's wait for the server (every statement, commit and rollback goes through
        it), bounded by `read_timeout_s` unless the caller set its own bound."""
        bound = timeout if timeout is not None else self.read_timeout_s
        options: dict[str, Any] = {"timeout": bound}
        if interval is not None:
            options["interval"] = interval
        try:
            return super().wait(gen, **options)
        except pg_errors._WaitTimeout:
            if timeout is not None:  # the caller's own bound: the caller handles it
                raise
        self._give_up()
        raise psycopg.OperationalError(
            f"the database did not answer within {bound:g} s; connection closed"
        )

    def _give_up(self) -> None:
        """Ask the server to stop the statement (a slow one would run on, holding its locks),
        then close the connection, whose protocol state is unknown mid-exchange."""
        try:
            self.cancel_safe(timeout=CANCEL_TIMEOUT_S)
        except Exception as exc:  # a frozen server: nothing to do but close
            log.debug("cancel of a statement given up failed: %s", exc)
        self.pgconn.finish()


@contextmanager
def unbounded(conn: Connection) -> Iterator[None]:
    """Let `conn` wait for its server without the read bound while the block runs (a
    migration: rebuilding an index over the prediction log may take minutes)."""
    dbapi = conn.connection.dbapi_connection
    if not isinstance(dbapi, BoundedConnection):
        yield
        return
    bound, dbapi.read_timeout_s = dbapi.read_timeout_s, None
    try:
        yield
    finally:
        dbapi.read_timeout_s = bound


def bound_pool_pings(
    engine: Engine, *, read_timeout_s: float | None, ping_timeout_s: float | None
) -> None:
    """Give the pool's pre-ping (`pool_pre_ping`) of `engine`'s BoundedConnections
    `ping_timeout_s` instead of `read_timeout_s`, statements keeping the latter.

    SQLAlchemy pings a pooled connection through the dialect, with no hook of its own, between
    the pool's "checkin" of it and its next "checkout" event: the connection carries the ping's
    bound while it sits in the pool, and gets the statements' back once it is handed out. A
    ping given up closes the connection, and SQLAlchemy then renews the whole pool (a hang
    took every pooled connection with it), not one connection per request."""
    if ping_timeout_s is not None and read_timeout_s is not None:
        ping_timeout_s = min(ping_timeout_s, read_timeout_s)

    @event.listens_for(engine, "checkin")
    def _for_the_ping(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        if isinstance(dbapi_conn, BoundedConnection):  # None: invalidated, not pooled
            dbapi_conn.read_timeout_s = ping_timeout_s

    @event.listens_for(engine, "checkout")
    def _for_statements(dbapi_conn, _record, _proxy) -> None:  # type: ignore[no-untyped-def]
        if isinstance(dbapi_conn, BoundedConnection):
            dbapi_conn.read_timeout_s = read_timeout_s
