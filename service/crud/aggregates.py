"""Small SQL aggregate helpers shared by the statistics queries (shadow, audit)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case


def as_int(condition: ColumnElement[Any]) -> ColumnElement[int]:
    """A boolean expression as 0/1, summable on SQLite and PostgreSQL alike."""
    return case((condition, 1), else_=0)


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None
