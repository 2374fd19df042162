"""Small SQL aggregate helpers shared by the statistics queries (shadow, audit, reviewers)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, func


def as_int(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """A boolean expression as 0/1, summable on SQLite and PostgreSQL alike."""
    return case((condition, 1), else_=0)


def count_where(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """How many rows of the group meet `condition` (0, not NULL, for an empty group)."""
    return func.coalesce(func.sum(as_int(condition)), 0)


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None
