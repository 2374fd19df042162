"""`tagflow db`: the database schema (Alembic migrations) and the retention of logged
predictions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy.engine import Engine

from service.cli.common import console, settings_or_exit
from service.config import Settings
from service.db import init_db, make_engine

db_app = typer.Typer(
    help="The database: schema (Alembic migrations) and retention.", no_args_is_help=True
)


def _database(settings: Settings, action: Callable[[Engine], str]) -> None:
    """Run a schema command; an unreachable database is a one-line error, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        console.print(action(engine))
    except SQLAlchemyError as exc:
        console.print(f"[red]database error:[/red] {exc.__class__.__name__}: {exc.orig or exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """The schema revision the database is at, and the newest one this code knows."""
    from service.db import current_revision, head_revision

    _database(
        settings_or_exit(),
        lambda engine: f"database: {current_revision(engine) or 'none'}; code: {head_revision()}",
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database to the newest revision (the API, worker and CLI also do it at start)."""
    from service.db import current_revision

    def run(engine: Engine) -> str:
        init_db(engine)
        return f"database at {current_revision(engine)}"

    _database(settings_or_exit(), run)


@db_app.command("prune")
def db_prune(
    older_than_days: Annotated[
        float, typer.Option(min=1.0, help="Delete logged predictions older than this")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only count what would go")] = False,
) -> None:
    """Delete logged predictions older than N days, with their shadow scores.

    Predictions a user report points at are kept. Run it from cron: the log grows with traffic.
    """
    from sqlmodel import Session

    from service.crud.predictions import prune_predictions
    from service.entities.common import utcnow

    def run(engine: Engine) -> str:
        init_db(engine)
        before = utcnow() - timedelta(days=older_than_days)
        with Session(engine) as session:
            gone = prune_predictions(session, before=before, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        return (
            f"{verb} {gone['predictions']} predictions and {gone['shadow_predictions']} shadow "
            f"scores older than {before:%Y-%m-%d %H:%M} UTC"
        )

    _database(settings_or_exit(), run)
