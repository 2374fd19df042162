"""Small SQL aggregate helpers shared by the statistics queries (shadow, audit, reviewers)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, case, func
from sqlmodel import Session, select


def as_int(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """A boolean expression as 0/1, summable on SQLite and PostgreSQL alike."""
    return case((condition, 1), else_=0)


def count_where(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """How many rows of the group meet `condition` (0, not NULL, for an empty group)."""
    return func.coalesce(func.sum(as_int(condition)), 0)


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def counts_by(
    session: Session, column: Any, members: type[StrEnum], *conditions: Any
) -> dict[str, int]:
    """Rows meeting `conditions`, counted by the value of `column` (an enum column), with 0
    for every member of `members` that has none."""
    counts = {member.value: 0 for member in members}
    query = select(column, func.count()).where(*conditions).group_by(column)
    for value, n in session.exec(query):
        counts[members(value).value] = n
    return counts
