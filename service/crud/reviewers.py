"""Reviewers as people: the spelling a name is recorded under (see entities/reviewer.py)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from service.api_keys import name_key
from service.entities import Reviewer
from service.entities.common import utcnow


def recorded_name(session: Session, *, name: str) -> str:
    """The spelling `name`'s person is recorded under: the first one a request used for a
    name that reads the same (`name_key`), and `name` itself the first time, kept from then on.

    A known name is one lookup by primary key. A new one is inserted and committed at once
    (the session's transaction ends); a request under another spelling that inserted it at
    the same moment wins or loses on the primary key, and both are told the winner's."""
    key = name_key(name)
    known = select(Reviewer.name).where(col(Reviewer.name_key) == key)
    if (found := session.exec(known).first()) is not None:
        return found
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(Reviewer)
        .values(name_key=key, name=name, first_seen=utcnow())
        .on_conflict_do_nothing(index_elements=["name_key"])
    )
    session.commit()
    return session.exec(known).one()
