"""Dataset snapshots: exactly which reviewer labels a model version was trained on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class DatasetSnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    base_hash: str
    base_rows: int
    train_label_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    holdout_label_ids: list[int] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
