"""Labels: append-only human answers. A correction is a new row that supersedes the old one."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class LabelSource(StrEnum):
    REVIEW = "review"
    FEEDBACK = "feedback"


class LabelBase(SQLModel):
    text_hash: str = Field(index=True, max_length=64)
    title: str
    description: str
    tag: str
    reviewer: str
    source: LabelSource = LabelSource.REVIEW
    task_id: int | None = Field(default=None, index=True)
    supersedes: int | None = None
    # Fixed at creation from the content hash: the held-out share never enters training.
    holdout: bool = False


class Label(LabelBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    superseded_by: int | None = None


class LabelPublic(LabelBase):
    id: int
    created_at: datetime
    superseded_by: int | None
