"""The registry's history of production: one row per promotion or rollback, never rewritten
except to mark a promotion as rolled back.

Rollback undoes the latest promotion not yet undone, as a stack: promote v1, v2, v3, v1 again,
and rollbacks in a row go to v3, v2, v1, then stop. (Each version remembering only the version
it replaced last time came back round: v1 → v3 → v2 → v1 → v3.)
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class ProductionAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class ProductionChangeBase(SQLModel):
    action: ProductionAction
    version: str = Field(index=True)  # production after the change
    replaced: str | None = None  # production before it
    actor: str  # who asked: an API key's role and name, the CLI's user, the retraining job


class ProductionChange(ProductionChangeBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    # On a promotion: the rollback that undid it. A rollback undoes the latest promotion that
    # has none, so rollbacks in a row walk back through the promotions and stop at the first.
    undone_by: int | None = Field(default=None, foreign_key="productionchange.id")


class ProductionChangePublic(ProductionChangeBase):
    id: int
    at: datetime
    undone_by: int | None = None
