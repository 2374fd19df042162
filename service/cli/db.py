"""`tagflow db`: the database schema (Alembic migrations), the retention of logged
predictions, the redrive of those the database refused, and of the review items the outbox
relay stopped sending."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import Engine, make_url

from service.cli.common import (
    CommandGroup,
    console,
    engine_or_exit,
    first_line,
    print_error,
    settings_or_exit,
    shown_url,
)
from service.config import Settings
from service.db import PRUNE_LOCK_TIMEOUT_S, init_db, is_lock_timeout, is_outage

db_app = typer.Typer(
    help="The database: schema (Alembic migrations), retention, dead letters, stopped outbox rows.",
    no_args_is_help=True,
    cls=CommandGroup,
)


def _database(settings: Settings, action: Callable[[Engine], str]) -> None:
    """Run a database command. A database that cannot be opened, or that becomes unavailable
    during the command (locked, gone), is one line, exit code 2, as in every command; one that
    refuses what the command does is one line, exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = engine_or_exit(settings, upgrade=False)
    try:
        console.print(action(engine))
    except OSError as exc:  # a file in the data directory that cannot be used (a folder, say)
        print_error(f"cannot use {exc.filename}:", f"{exc.strerror or exc} (TAGFLOW_DATA_DIR)")
        raise typer.Exit(2) from None
    except SQLAlchemyError as exc:
        if is_outage(exc):
            raise  # CommandGroup's "the database is unavailable", exit 2
        print_error(
            f"database error on {shown_url(settings.resolved_database_url)}:", first_line(exc)
        )
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """The schema revision the database is at, and the newest one this code knows."""
    from service.db import current_revision, head_revision

    settings = settings_or_exit()
    missing = _missing_sqlite_file(settings.resolved_database_url)
    if missing is not None and not settings.data_dir.is_file():  # a file: said as elsewhere
        # Asking is not creating: opening a SQLite URL would leave an empty file behind.
        console.print(f"database: none (no file at {missing}); code: {head_revision()}")
        return
    _database(
        settings,
        lambda engine: f"database: {current_revision(engine) or 'none'}; code: {head_revision()}",
    )


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL that does not exist yet; None for any other database. (An
    in-memory SQLite URL never gets here: `Settings` refuses it.)"""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database to the newest revision (the API, worker and CLI also do it at start)."""
    from service.db import current_revision

    def run(engine: Engine) -> str:
        # Said either way: "database at 0015" alone read the same whether it upgraded or not.
        before = current_revision(engine)
        init_db(engine)
        after = current_revision(engine)
        if before == after:
            return f"database at {after}, the newest revision: nothing to upgrade"
        return f"database upgraded from {before or 'none (new)'} to {after}"

    _database(settings_or_exit(), run)


def _days(value: float) -> float:
    """A number of days from 1 to 36500 (checked here, not by a range on the option: `nan`
    failed that as "should be less than or equal to 36500")."""
    if not (math.isfinite(value) and 1 <= value <= 36500):
        raise typer.BadParameter(f"{value} is not a number of days from 1 to 36500")
    return value


def _lock_seconds(value: float) -> float:
    """A number of seconds from 0.1 to 3600."""
    if not (math.isfinite(value) and 0.1 <= value <= 3600):
        raise typer.BadParameter(f"{value} is not a number of seconds from 0.1 to 3600")
    return value


@db_app.command("prune")
def db_prune(
    older_than_days: Annotated[
        float,
        typer.Option(
            callback=_days,
            help="Delete logged predictions, and outbox rows done, older than this (1 to 36500)",
        ),
    ],
    dry_run: Annotated[bool, typer.Option(help="Only count what would go")] = False,
    lock_timeout: Annotated[
        float,
        typer.Option(
            callback=_lock_seconds,
            help="Seconds to wait for a lock another transaction holds (PostgreSQL), 0.1 to 3600",
        ),
    ] = PRUNE_LOCK_TIMEOUT_S,
) -> None:
    """Delete logged predictions older than N days, with their shadow scores, and the outbox
    rows done before then.

    Predictions a user report points at are kept, and so are outbox rows not done (pending,
    in flight or stopped). Run it from cron: both grow with traffic. A lock held past
    --lock-timeout (a migration, a stuck transaction) stops it, exit 2, as an unavailable
    database does (worth a retry), and said as a lock, not an outage.
    """
    from sqlmodel import Session

    from service.crud.predictions import prune_predictions
    from service.entities.common import utcnow
    from service.outbox import prune_done

    def run(engine: Engine) -> str:
        init_db(engine)
        before = utcnow() - timedelta(days=older_than_days)
        with Session(engine) as session:
            with _locked_exits("the predictions are", lock_timeout):
                gone = prune_predictions(
                    session, before=before, dry_run=dry_run, lock_timeout_s=lock_timeout
                )
            with _locked_exits("the outbox rows are", lock_timeout):
                outbox = prune_done(
                    session, before=before, dry_run=dry_run, lock_timeout_s=lock_timeout
                )
        verb = "would delete" if dry_run else "deleted"
        return (
            f"{verb} {gone['predictions']} predictions and {gone['shadow_predictions']} shadow "
            f"scores older than {before:%Y-%m-%d %H:%M} UTC, and {outbox} outbox rows done "
            "before then"
        )

    _database(settings_or_exit(), run)


@contextmanager
def _locked_exits(what: str, lock_timeout: float) -> Iterator[None]:
    """A lock on `what` held elsewhere past `lock_timeout` as one line, exit 2."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        if not is_lock_timeout(exc):
            raise
        # PostgreSQL's own words ("canceling statement due to lock timeout") do not say whose
        # lock, nor how long was waited. Nor is it an outage: the database answered all
        # along (exit 2 all the same: worth a retry, as an outage is).
        print_error(
            f"{what} locked:",
            "a lock another transaction holds on them was not released within "
            f"{lock_timeout:g} s (--lock-timeout); the database answers; try again once that "
            "transaction ends",
        )
        raise typer.Exit(2) from None


@db_app.command("replay-dead-letters")
def db_replay_dead_letters() -> None:
    """Write the predictions the database refused (the dead-letter file in the data directory)
    once the cause is fixed; what it still refuses stays in the file, with the new reason.

    Exits 1 while some are kept, so a scheduled run that cannot finish the job is seen.
    """
    from service.dead_letters import ReplayReport, replay_dead_letters

    settings = settings_or_exit()
    path = settings.dead_letter_path
    reports: list[ReplayReport] = []

    def run(engine: Engine) -> str:
        init_db(engine)
        report = replay_dead_letters(engine, path)
        reports.append(report)
        if report == ReplayReport():
            return f"no dead letters in {path}"
        return (
            f"{report.written} written, {report.already_there} written before, "
            f"{report.kept} kept in {path}"
        )

    _database(settings, run)
    if reports and reports[0].kept:
        raise typer.Exit(1)


MAX_ROW_ID = 2**63 - 1  # SQLite's INTEGER, PostgreSQL's BIGINT


@db_app.command("resend-outbox")
def db_resend_outbox(
    ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID",
            # Past the largest integer a database stores, an id was an OverflowError traceback.
            min=1,
            max=MAX_ROW_ID,
            help="Outbox row ids (as the relay's log names them); all stopped rows if none",
        ),
    ] = None,
) -> None:
    """Send again the review items the outbox relay stopped after 5 sends, each job lost (the
    API logged each at ERROR): their count of sends starts from 0, and the relay of a running
    API sends them at its next pass (every TAGFLOW_WATCH_INTERVAL_S). Fix the cause first.

    Exits 1 when an id given is not a stopped row, after re-queueing the others.
    """
    from sqlmodel import Session

    from service.outbox import resend_stopped

    unknown: list[int] = []

    def run(engine: Engine) -> str:
        init_db(engine)
        with Session(engine) as session:
            resent = resend_stopped(session, ids=ids or None)
        unknown.extend(sorted(set(ids or ()) - {row_id for row_id, _ in resent}))
        if not resent:
            return "no stopped outbox rows re-queued"
        shown = ", ".join(f"{row_id} ({kind})" for row_id, kind in resent)
        return f"re-queued {len(resent)} outbox row(s) for the relay's next pass: {shown}"

    _database(settings_or_exit(), run)
    if unknown:
        print_error(
            "not re-queued:", f"{', '.join(map(str, unknown))}: no such row, or not stopped"
        )
        raise typer.Exit(1)
