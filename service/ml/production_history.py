"""Every change of the production version, kept so that rollback knows what to undo and a team
can see who changed production when.

Promotions stack up; a rollback undoes the latest promotion not yet undone and restores the
version it replaced. The registry (registry.promote / registry.rollback) writes these rows in
the same transaction as the status change, so history and statuses never disagree.
"""

from __future__ import annotations

from sqlalchemy import text, update
from sqlmodel import Session, col, select

from service.db import take_sqlite_write_lock
from service.entities import ProductionAction, ProductionChange, ProductionChangePublic
from service.entities.common import as_utc

MAX_HISTORY = 1000
# The key of PostgreSQL's transaction-level advisory lock on changes of production ("tflw").
_LOCK_KEY = 0x74666C77


class UndoRaced(Exception):
    """Another rollback undid the same promotion first: re-run on what is production now."""


def lock(session: Session) -> None:
    """Take the production lock for the rest of the session's transaction: one change of
    production at a time, across processes and hosts sharing the database, each reading the
    registry as the one before left it. Waits for the holder (SQLite: up to its busy
    timeout); the transaction's commit or rollback releases it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:
        take_sqlite_write_lock(session, table=ProductionChange)


def record_promotion(session: Session, *, version: str, replaced: str | None, actor: str) -> None:
    """Add (uncommitted) the promotion of `version` over `replaced`."""
    session.add(
        ProductionChange(
            action=ProductionAction.PROMOTE, version=version, replaced=replaced, actor=actor
        )
    )


def undoable(session: Session) -> ProductionChange | None:
    """The promotion a rollback undoes now: the latest one no rollback has undone."""
    query = (
        select(ProductionChange)
        .where(
            ProductionChange.action == ProductionAction.PROMOTE,
            col(ProductionChange.undone_by).is_(None),
        )
        .order_by(col(ProductionChange.id).desc())
        .limit(1)
    )
    return session.exec(query).first()


def record_rollback(session: Session, *, promotion: ProductionChange, actor: str) -> None:
    """Add (uncommitted) the rollback of `promotion`, and mark it undone.

    The mark is a conditional update (only while it has none), so of two rollbacks that read
    the same promotion, the second finds it taken (PostgreSQL waits on the first's row lock
    and then re-reads; SQLite runs one writer at a time) and raises UndoRaced.
    """
    assert promotion.replaced is not None, "the first promotion cannot be rolled back"
    change = ProductionChange(
        action=ProductionAction.ROLLBACK,
        version=promotion.replaced,
        replaced=promotion.version,
        actor=actor,
    )
    session.add(change)
    session.flush()
    marked = session.execute(
        update(ProductionChange)
        .where(
            col(ProductionChange.id) == promotion.id,
            col(ProductionChange.undone_by).is_(None),
        )
        .values(undone_by=change.id)
        .execution_options(synchronize_session=False)
    )
    if marked.rowcount != 1:
        raise UndoRaced(f"promotion #{promotion.id} of {promotion.version} was already undone")


def rollback_targets(session: Session) -> list[str]:
    """The versions rollbacks in a row would restore, the next one first: what each promotion
    not yet undone replaced, newest promotion first (`undoable`)."""
    query = (
        select(ProductionChange.replaced)
        .where(
            ProductionChange.action == ProductionAction.PROMOTE,
            col(ProductionChange.undone_by).is_(None),
        )
        .order_by(col(ProductionChange.id).desc())
    )
    return list(dict.fromkeys(v for v in session.exec(query) if v is not None))


def rolled_back_from(session: Session) -> list[str]:
    """The versions production was ever rolled back from, newest rollback first."""
    query = (
        select(ProductionChange.replaced)
        .where(ProductionChange.action == ProductionAction.ROLLBACK)
        .order_by(col(ProductionChange.id).desc())
    )
    return list(dict.fromkeys(v for v in session.exec(query) if v is not None))


def history(session: Session, *, limit: int = 100) -> list[ProductionChangePublic]:
    """Changes of production, newest first, as the API and the CLI show them."""
    query = select(ProductionChange).order_by(col(ProductionChange.id).desc()).limit(limit)
    shown = [
        ProductionChangePublic.model_validate(c, from_attributes=True) for c in session.exec(query)
    ]
    return [c.model_copy(update={"at": as_utc(c.at)}) for c in shown]
