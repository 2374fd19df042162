"""Schema migrations with Alembic, driven from code: no alembic.ini is needed at run time.

`upgrade(engine)` brings a database to the newest revision; `init_db` calls it at every start
of the API, the worker and the CLI. A database made by the old `SQLModel.metadata.create_all`
(tagflow's tables, no `alembic_version`) is first stamped at the baseline revision, whose schema
is exactly what create_all produced, and then upgraded like any other.

Several processes may start at once on one database, so the check-stamp-upgrade sequence runs
in one transaction that only one of them can hold at a time (see `_exclusive`). Revisions are
written with `python -m service.migrations revision -m "..."` (see `__main__.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from service.pg import unbounded

MIGRATIONS_DIR = Path(__file__).resolve().parent
# The revision whose schema equals what create_all made before migrations existed.
BASELINE = "0001"
# The tables of that schema: finding any of them without `alembic_version` means create_all.
BASELINE_TABLES = frozenset(
    {
        "datasetsnapshot",
        "feedback",
        "label",
        "modelversion",
        "outboxitem",
        "prediction",
        "review_task",
        "shadowprediction",
    }
)
VERSION_TABLE = "alembic_version"
# Alembic's `context` and `op` are module globals set for the command that runs: two commands
# at once in one process (threads) would mix them up, so a process runs one at a time.
_PROCESS_LOCK = threading.Lock()
# pg_advisory_xact_lock key, any fixed 64-bit number: zlib.crc32(b"tagflow.migrations").
PG_LOCK_KEY = 1935290684


def make_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for tagflow's revisions; commands run on `connection` (see env.py)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # "0002_add_x.py": revision ids are sequence numbers (see __main__.py), file names sort.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    """The newest revision in the package (a single line of history is enforced)."""
    heads = ScriptDirectory.from_config(make_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {sorted(heads)}")
    return heads[0]


class UnknownRevisionError(RuntimeError):
    """The database is at a revision this code does not have: a newer tagflow upgraded it."""


@cache
def known_revisions() -> frozenset[str]:
    """Every revision in the package."""
    script = ScriptDirectory.from_config(make_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty (or create_all-made) database.

    Read from the version table directly: Alembic's MigrationContext logs two INFO lines
    ("Context impl ...", "Will assume ... DDL") each time it is made, and every start of the
    API, the worker and the CLI asks, so `tagflow up` printed six such lines for nothing."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        revisions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(revisions) > 1:  # as Alembic's get_current_revision: one line of history only
        raise RuntimeError(f"the database is at several revisions: {sorted(revisions)}")
    return revisions[0] if revisions else None


def upgrade(engine: Engine) -> None:
    """Bring the database to the head revision; a no-op (no lock taken) when it is there.
    UnknownRevisionError for a database a newer tagflow has upgraded (Alembic's own error is
    "Can't locate revision", deep in a traceback)."""
    current = current_revision(engine)
    if current == head_revision():
        return
    _refuse_unknown(current)
    with _PROCESS_LOCK, _exclusive(engine) as conn:
        _upgrade_on(conn)


@contextmanager
def upgraded_view(engine: Engine) -> Iterator[Connection]:
    """A connection on which the database is at the head revision, the database itself left
    at its own: the revisions it lacks run in a transaction rolled back at the end.

    For reading a database as this release will see it before it is upgraded (`tagflow models
    check`, run with a new release while the old one still serves): upgrading it then would
    lock out the release in service, which refuses a revision it does not know. While the
    view is open it holds the migration lock (SQLite's write lock, the tables the revisions
    alter on PostgreSQL), so read what is needed and close it."""
    current = current_revision(engine)
    if current == head_revision():
        with engine.connect() as conn:
            yield conn
        return
    _refuse_unknown(current)
    with _PROCESS_LOCK, _exclusive(engine, commit=False) as conn:
        _upgrade_on(conn)
        yield conn


def _refuse_unknown(current: str | None) -> None:
    """UnknownRevisionError for a revision this code does not have (a newer tagflow's)."""
    if current is not None and current not in known_revisions():
        raise UnknownRevisionError(
            f"the database is at schema revision {current}, which this tagflow does not know "
            f"(its newest is {head_revision()}): a newer tagflow has upgraded it; run that "
            "version, or restore the database from before the upgrade"
        )


def _upgrade_on(conn: Connection) -> None:
    """Run the revisions the database lacks on `conn`, inside its transaction (see
    `_exclusive`)."""
    config = make_config(conn)
    # Checked again under the lock: another process may have migrated meanwhile, in which
    # case there is an alembic_version now and the upgrade below does nothing.
    if _made_by_create_all(conn):
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")


def _made_by_create_all(conn: Connection) -> bool:
    """tagflow tables without an alembic_version table: a database from before migrations."""
    tables = set(inspect(conn).get_table_names())
    return VERSION_TABLE not in tables and bool(tables & BASELINE_TABLES)


@contextmanager
def _exclusive(engine: Engine, *, commit: bool = True) -> Iterator[Connection]:
    """A connection in a transaction that one process at a time can hold; committed at the end
    (rolled back with `commit` false).

    PostgreSQL: DDL is transactional, and `pg_advisory_xact_lock` makes a second process wait
    until the first has committed (the lock is released with the transaction), then see its
    alembic_version row.

    SQLite: `BEGIN IMMEDIATE` takes the database's write lock up front, so a second process (or
    thread) waits in it, within the engine's busy timeout, before it reads anything; SQLite
    DDL is transactional too. The connection is switched to driver-level autocommit for this
    so that pysqlite issues no BEGIN of its own (it would start a deferred one, and it does
    not wrap DDL at all); the pool resets the isolation level when the connection returns.
    This locks the database file itself, so it also works across processes and needs no
    lock file beside it.
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT" if commit else "ROLLBACK")
        return
    # No read bound (service.pg): a migration may rebuild an index over the whole prediction
    # log, and a second process waits here for the first's to commit.
    with engine.connect() as conn, conn.begin() as transaction, unbounded(conn):
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        yield conn
        if not commit:
            transaction.rollback()
